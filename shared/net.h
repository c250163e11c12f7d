/* net.h: address parsing for listeners and upstreams. */
#ifndef SH_NET_H
#define SH_NET_H

#include <sys/socket.h>

#include "sh.h"

/* Parse "host:port" or "[v6]:port" (host may be a name; resolved now, blocking: use at start).
 * Returns SH_OK, or SH_ERR with the reason in err. */
int sh_net_addr(const char *s, struct sockaddr_storage *sa, int *salen, struct sh_err *err);

/* "1.2.3.4" or "::1" for logs. */
void sh_net_ntop(const struct sockaddr *sa, char *out, size_t n);

#endif
