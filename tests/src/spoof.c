/* spoof IFACE SRC_MAC SRC_IP DST_MAC DST_IP PORT TEXT: sends one UDP datagram carrying TEXT
 * through a packet socket, with the Ethernet and IPv4 sources given (any, not the
 * interface's): what a tenant holding CAP_NET_RAW can do. Exit 0 once it is sent.
 * With PORT "arp": asks who has DST_IP as sender SRC_MAC/SRC_IP, and exits 0 when a reply
 * to that sender comes within 2 s, 1 when none does. */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if_arp.h>
#include <netinet/if_ether.h>
#include <poll.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int mac(const char *s, unsigned char *out) {
	return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &out[0], &out[1], &out[2], &out[3], &out[4], &out[5]) == 6;
}

static uint16_t checksum(const void *p, size_t n) {
	const uint16_t *w = p;
	uint32_t sum = 0;
	for (; n > 1; n -= 2) sum += *w++;
	if (n) sum += *(const uint8_t *)w;
	while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* The ARP mode: one request, then a reply whose target is the forged sender. */
static int arp(int s, struct sockaddr_ll *to, const unsigned char *smac, const char *sip, const char *dip) {
	unsigned char frame[64] = {0};
	struct ether_header *eth = (void *)frame;
	struct ether_arp *a = (void *)(frame + sizeof *eth);
	memset(eth->ether_dhost, 0xff, 6);
	memcpy(eth->ether_shost, smac, 6);
	eth->ether_type = htons(ETHERTYPE_ARP);
	a->arp_hrd = htons(ARPHRD_ETHER);
	a->arp_pro = htons(ETHERTYPE_IP);
	a->arp_hln = 6;
	a->arp_pln = 4;
	a->arp_op = htons(ARPOP_REQUEST);
	memcpy(a->arp_sha, smac, 6);
	if (inet_pton(AF_INET, sip, a->arp_spa) != 1 || inet_pton(AF_INET, dip, a->arp_tpa) != 1) return 2;
	memset(to->sll_addr, 0xff, 6);
	if (sendto(s, frame, sizeof frame, 0, (struct sockaddr *)to, sizeof *to) != sizeof frame) { perror("sendto"); return 1; }
	struct pollfd p = {.fd = s, .events = POLLIN};
	while (poll(&p, 1, 2000) == 1) {
		unsigned char in[1514];
		ssize_t n = recv(s, in, sizeof in, 0);
		struct ether_arp *r = (void *)(in + sizeof(struct ether_header));
		if (n >= (ssize_t)(sizeof(struct ether_header) + sizeof *r) &&
		    ((struct ether_header *)in)->ether_type == htons(ETHERTYPE_ARP) && r->arp_op == htons(ARPOP_REPLY) &&
		    !memcmp(r->arp_tpa, a->arp_spa, 4) && !memcmp(r->arp_spa, a->arp_tpa, 4))
			return 0;
	}
	return 1;
}

int main(int argc, char **argv) {
	if (argc != 8) {
		fprintf(stderr, "usage: spoof IFACE SRC_MAC SRC_IP DST_MAC DST_IP PORT TEXT\n");
		return 2;
	}
	unsigned char frame[1514] = {0};
	struct ether_header *eth = (void *)frame;
	struct iphdr *ip = (void *)(frame + sizeof *eth);
	struct udphdr *udp = (void *)((char *)ip + sizeof *ip);
	char *data = (char *)udp + sizeof *udp;
	size_t len = strlen(argv[7]);
	if (len > 1000 || !mac(argv[2], eth->ether_shost) || !mac(argv[4], eth->ether_dhost)) return 2;
	int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
	if (s < 0) { perror("socket(AF_PACKET)"); return 1; }
	struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(argv[1]), .sll_halen = 6};
	if (!strcmp(argv[6], "arp")) return arp(s, &to, eth->ether_shost, argv[3], argv[5]);
	eth->ether_type = htons(ETHERTYPE_IP);
	memcpy(data, argv[7], len);
	ip->version = 4;
	ip->ihl = 5;
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->tot_len = htons(sizeof *ip + sizeof *udp + len);
	if (inet_pton(AF_INET, argv[3], &ip->saddr) != 1 || inet_pton(AF_INET, argv[5], &ip->daddr) != 1) return 2;
	ip->check = checksum(ip, sizeof *ip);
	udp->source = htons(40000);
	udp->dest = htons(atoi(argv[6]));
	udp->len = htons(sizeof *udp + len);
	udp->check = 0; /* none: allowed for IPv4 */
	memcpy(to.sll_addr, eth->ether_dhost, 6);
	size_t n = sizeof *eth + sizeof *ip + sizeof *udp + len;
	if (sendto(s, frame, n, 0, (struct sockaddr *)&to, sizeof to) != (ssize_t)n) { perror("sendto"); return 1; }
	return 0;
}
