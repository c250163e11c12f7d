/* net.c: address parsing (see net.h). */
#include "net.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

int sh_net_addr(const char *s, struct sockaddr_storage *sa, int *salen, struct sh_err *err)
{
	char host[256];
	const char *colon, *port;
	struct addrinfo hints, *res;
	size_t hl;
	int rc;

	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':')
			return sh_errf(err, "\"%s\": expected [addr]:port", s);
		hl = (size_t)(close - s - 1);
		colon = close + 1;
		s++;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return sh_errf(err, "\"%s\": expected host:port", s);
		hl = (size_t)(colon - s);
	}
	port = colon + 1;
	if (hl == 0 || hl >= sizeof(host) || !*port || strspn(port, "0123456789") != strlen(port) ||
	    atoi(port) < 1 || atoi(port) > 65535)
		return sh_errf(err, "\"%s\": expected host:port with a port in 1..65535", s);
	memcpy(host, s, hl);
	host[hl] = '\0';
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc)
		return sh_errf(err, "\"%s\": %s", host, gai_strerror(rc));
	memcpy(sa, res->ai_addr, res->ai_addrlen);
	*salen = (int)res->ai_addrlen;
	freeaddrinfo(res);
	return SH_OK;
}

void sh_net_ntop(const struct sockaddr *sa, char *out, size_t n)
{
	const void *a = sa->sa_family == AF_INET6 ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
						  : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
	if (!inet_ntop(sa->sa_family, a, out, (socklen_t)n))
		snprintf(out, n, "?");
}
