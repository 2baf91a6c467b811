/* probe: what a process inside a container can reach, for tests/tests/escape.rs.
 * Built static by the harness (cc -static) and copied into a test rootfs, since busybox
 * has neither ptrace nor open(2) with chosen flags. Every outcome is printed as a word
 * ("ok" or the errno's name) so that the test can tell a refusal from a success.
 *
 *   probe open PATH                   open PATH for writing four ways (never creating it)
 *   probe write PATH DATA             open PATH O_WRONLY and write DATA
 *   probe read PATH                   read PATH, print the byte count
 *   probe fds [OUT]                   open fds (but the listing's own), cwd and root
 *   probe ptrace PID                  PTRACE_ATTACH and PTRACE_SEIZE, then kill(PID, 0)
 *   probe mknod PATH b|c MAJ MIN [DATA]  mknod, then open it (write DATA, else read)
 *   probe exe-hold SECONDS OUT        CVE-2019-5736: keep O_PATH fds on every other
 *                                     process's /proc/PID/exe and keep trying to reopen
 *                                     them for writing; summary to OUT
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *outcome(int rc) { return rc < 0 ? strerrorname_np(errno) : "ok"; }

static const struct {
	const char *name;
	int flags;
} write_modes[] = {
	{"wronly", O_WRONLY},
	{"rdwr", O_RDWR},
	{"wronly-trunc", O_WRONLY | O_TRUNC},
	{"rdwr-trunc", O_RDWR | O_TRUNC},
};
#define NMODES (sizeof write_modes / sizeof write_modes[0])

static int try_open(const char *path, int flags) {
	int fd = open(path, flags | O_CLOEXEC);
	if (fd >= 0)
		close(fd);
	return fd;
}

static int cmd_open(const char *path) {
	for (size_t i = 0; i < NMODES; i++)
		printf("%s %s %s\n", path, write_modes[i].name, outcome(try_open(path, write_modes[i].flags)));
	return 0;
}

static int cmd_write(const char *path, const char *data) {
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	printf("open %s\n", outcome(fd));
	if (fd >= 0) {
		printf("write %s\n", outcome(write(fd, data, strlen(data)) < 0 ? -1 : 0));
		close(fd);
	}
	return 0;
}

static int cmd_read(const char *path) {
	char buf[4096];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	printf("open %s\n", outcome(fd));
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof buf);
	if (n < 0)
		printf("read %s\n", outcome(-1));
	else
		printf("read %zd\n", n);
	close(fd);
	return 0;
}

/* Writes TEXT to PATH through PATH.tmp and a rename, so that a reader polling for PATH
 * never sees it half-written. */
static int write_file(const char *path, const char *text) {
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "we");
	if (!f)
		return 1;
	fputs(text, f);
	if (fclose(f) != 0)
		return 1;
	return rename(tmp, path) == 0 ? 0 : 1;
}

static void print_link(FILE *f, const char *what, const char *path) {
	char target[4096];
	struct stat st;
	ssize_t n = readlink(path, target, sizeof target - 1);
	target[n < 0 ? 0 : n] = 0;
	if (stat(path, &st) < 0)
		st.st_dev = st.st_ino = 0;
	fprintf(f, "%s %s %lu:%lu\n", what, n < 0 ? outcome(-1) : target, (unsigned long)st.st_dev,
		(unsigned long)st.st_ino);
}

/* The report is gathered in memory (no fd) and written when the listing is done: to OUT
 * if given (a terminal's output would not reach the test), else to stdout. */
static int cmd_fds(const char *out) {
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	DIR *d = opendir("/proc/self/fd");
	if (!f || !d)
		return 1;
	struct dirent *e;
	char path[64], target[4096];
	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);
		if (e->d_name[0] == '.' || fd == dirfd(d))
			continue;
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
		ssize_t n = readlink(path, target, sizeof target - 1);
		target[n < 0 ? 0 : n] = 0;
		fprintf(f, "fd %d %s\n", fd, n < 0 ? outcome(-1) : target);
	}
	closedir(d);
	print_link(f, "cwd", "/proc/self/cwd");
	print_link(f, "root", "/proc/self/root");
	fclose(f);
	if (out)
		return write_file(out, text);
	fputs(text, stdout);
	return 0;
}

static int cmd_ptrace(pid_t pid) {
	long rc = ptrace(PTRACE_ATTACH, pid, 0, 0);
	printf("attach %s\n", outcome(rc));
	if (rc == 0) {
		waitpid(pid, NULL, __WALL);
		ptrace(PTRACE_DETACH, pid, 0, 0);
	}
	rc = ptrace(PTRACE_SEIZE, pid, 0, 0);
	printf("seize %s\n", outcome(rc));
	if (rc == 0)
		ptrace(PTRACE_DETACH, pid, 0, 0);
	printf("kill %s\n", outcome(kill(pid, 0)));
	return 0;
}

static int cmd_mknod(const char *path, const char *type, const char *maj, const char *min, const char *data) {
	mode_t kind = type[0] == 'b' ? S_IFBLK : S_IFCHR;
	dev_t dev = makedev(strtoul(maj, NULL, 10), strtoul(min, NULL, 10));
	printf("mknod %s\n", outcome(mknod(path, kind | 0600, dev)));
	int fd = open(path, (data ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
	printf("open %s\n", outcome(fd));
	if (fd >= 0) {
		char buf[512];
		ssize_t n = data ? write(fd, data, strlen(data)) : read(fd, buf, sizeof buf);
		printf("%s %s\n", data ? "write" : "read", outcome(n < 0 ? -1 : 0));
		if (data)
			printf("fsync %s\n", outcome(fsync(fd)));
		close(fd);
	}
	return 0;
}

/* One process's exe, held as an O_PATH fd, and what reopening it for writing gave. */
#define MAX_HELD 64
static struct {
	pid_t pid;
	int fd;
	char target[256];
	const char *last[NMODES];
	int opened[NMODES];
} held[MAX_HELD];
static int nheld;

static int is_held(pid_t pid) {
	for (int i = 0; i < nheld; i++)
		if (held[i].pid == pid)
			return 1;
	return 0;
}

/* Grabs the exe of every other process not held yet (O_PATH needs no write access, and
 * is what the 2019 exploit used). Denials are counted: a refused exe is a defence too. */
static void grab_exes(int *denied) {
	DIR *d = opendir("/proc");
	struct dirent *e;
	char path[64];
	while (d && (e = readdir(d)) && nheld < MAX_HELD) {
		pid_t pid = atoi(e->d_name);
		if (pid <= 0 || pid == getpid() || is_held(pid))
			continue;
		snprintf(path, sizeof path, "/proc/%d/exe", pid);
		int fd = open(path, O_PATH | O_CLOEXEC);
		if (fd < 0) {
			if (errno == EACCES || errno == EPERM)
				(*denied)++;
			continue;
		}
		held[nheld].pid = pid;
		held[nheld].fd = fd;
		ssize_t n = readlink(path, held[nheld].target, sizeof held[nheld].target - 1);
		held[nheld].target[n < 0 ? 0 : n] = 0;
		nheld++;
	}
	if (d)
		closedir(d);
}

/* Reopens every held exe through /proc/self/fd for writing, the way the exploit waited
 * for the runtime to exit (ETXTBSY) and then wrote the binary. */
static void reopen_held(void) {
	char path[64];
	for (int i = 0; i < nheld; i++) {
		snprintf(path, sizeof path, "/proc/self/fd/%d", held[i].fd);
		for (size_t m = 0; m < NMODES; m++) {
			int rc = try_open(path, write_modes[m].flags);
			held[i].last[m] = outcome(rc);
			held[i].opened[m] |= rc >= 0;
		}
	}
}

static int cmd_exe_hold(int seconds, const char *out) {
	int denied = 0;
	struct timespec start, now, nap = {0, 2000000};
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		grab_exes(&denied);
		reopen_held();
		if (nheld > 0 && access("/tmp/holding", F_OK) != 0)
			write_file("/tmp/holding", "holding\n");
		nanosleep(&nap, NULL);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (now.tv_sec - start.tv_sec < seconds);
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return 1;
	fprintf(f, "denied %d\n", denied);
	for (int i = 0; i < nheld; i++) {
		fprintf(f, "held %d %s", held[i].pid, held[i].target);
		for (size_t m = 0; m < NMODES; m++)
			fprintf(f, " %s=%s", write_modes[m].name, held[i].opened[m] ? "OPENED" : held[i].last[m]);
		fprintf(f, "\n");
	}
	fclose(f);
	return write_file(out, text);
}

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	const char *cmd = argc > 1 ? argv[1] : "";
	if (!strcmp(cmd, "open") && argc == 3)
		return cmd_open(argv[2]);
	if (!strcmp(cmd, "write") && argc == 4)
		return cmd_write(argv[2], argv[3]);
	if (!strcmp(cmd, "read") && argc == 3)
		return cmd_read(argv[2]);
	if (!strcmp(cmd, "fds") && (argc == 2 || argc == 3))
		return cmd_fds(argc == 3 ? argv[2] : NULL);
	if (!strcmp(cmd, "ptrace") && argc == 3)
		return cmd_ptrace(atoi(argv[2]));
	if (!strcmp(cmd, "mknod") && (argc == 6 || argc == 7))
		return cmd_mknod(argv[2], argv[3], argv[4], argv[5], argc == 7 ? argv[6] : NULL);
	if (!strcmp(cmd, "exe-hold") && argc == 4)
		return cmd_exe_hold(atoi(argv[2]), argv[3]);
	fprintf(stderr, "probe: bad usage (see probe.c)\n");
	return 2;
}
