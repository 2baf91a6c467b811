/* migrate-dirty MIB: the process bench/migrate moves. It holds MIB MiB of
 * dirty anonymous memory filled with xorshift output (so zstd cannot shrink
 * the stream to nothing), then idles: every 100 ms it bumps a counter inside
 * that memory, as a live tenant would. Stdio goes to /dev/null so that
 * nothing outside the process tree is open. Built static
 * (gcc -O2 -static), so it runs inside a busybox rootfs as well as on the
 * host. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2 || atol(argv[1]) <= 0) {
		fprintf(stderr, "usage: migrate-dirty MIB\n");
		return 2;
	}
	size_t words = (size_t)atol(argv[1]) << 17; /* MiB / 8 bytes */
	int null = open("/dev/null", O_RDWR);
	if (null < 0)
		return 1;
	for (int fd = 0; fd < 3; fd++)
		dup2(null, fd);
	if (null > 2)
		close(null);

	uint64_t *mem = malloc(words * sizeof *mem);
	if (!mem)
		return 1;
	uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
	for (size_t i = 0; i < words; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		mem[i] = x;
	}
	/* volatile: the counter's store must happen, not be folded away. */
	volatile uint64_t *counter = mem;
	const struct timespec tick = { 0, 100 * 1000 * 1000 };
	for (;;) {
		nanosleep(&tick, NULL);
		(*counter)++;
	}
}
