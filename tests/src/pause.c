/* pause: a pod sandbox's first process. It holds the pod's namespaces, reaps the
 * orphans that end up with it as their reaper, and exits 0 on SIGINT or SIGTERM. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) {
	(void)sig;
	_exit(0);
}

static void reap(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(void) {
	struct sigaction q = {.sa_handler = quit};
	struct sigaction r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
	sigaction(SIGINT, &q, NULL);
	sigaction(SIGTERM, &q, NULL);
	sigaction(SIGCHLD, &r, NULL);
	for (;;)
		pause();
}
