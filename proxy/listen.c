/* listen.c: listeners and TLS (see listen.h). */
#include "listen.h"

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <errno.h>
#include <string.h>

#include "conn.h"
#include "net.h"
#include "pxlog.h"

/* Modern TLS 1.2 suites (forward secret AEAD only); TLS 1.3 keeps OpenSSL's defaults. */
#define TLS12_CIPHERS "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

static int tls_err(struct sh_err *err, const char *what, const char *path)
{
	char buf[160];
	unsigned long e = ERR_get_error();

	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return sh_errf(err, "%s %s: %s", what, path, e ? buf : "failed");
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
		       const unsigned char *in, unsigned int inlen, void *arg)
{
	unsigned int i = 0;

	(void)ssl;
	(void)arg;
	while (i < inlen) {
		unsigned int n = in[i];
		if (i + 1 + n > inlen)
			break;
		if (n == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
			*out = in + i + 1;
			*outlen = (unsigned char)n;
			return SSL_TLSEXT_ERR_OK;
		}
		i += 1 + n;
	}
	return SSL_TLSEXT_ERR_NOACK;  /* no common protocol: go on without ALPN */
}

SSL_CTX *px_tls_ctx_new(const struct px_conf *c, struct sh_err *err)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (!ctx) {
		tls_err(err, "SSL_CTX_new", "");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
				 SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	if (!SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS)) {
		tls_err(err, "cipher list", "");
		goto out_free;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, c->tls_cert) != 1) {
		tls_err(err, "tls_cert", c->tls_cert);
		goto out_free;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, c->tls_key, SSL_FILETYPE_PEM) != 1) {
		tls_err(err, "tls_key", c->tls_key);
		goto out_free;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		tls_err(err, "tls_key does not match tls_cert", c->tls_key);
		goto out_free;
	}
	SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"kvgate", 6);
	SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
	return ctx;
out_free:
	SSL_CTX_free(ctx);
	return NULL;
}

int px_tls_reload(struct px_server *srv, struct sh_err *err)
{
	SSL_CTX *ctx;

	if (!*srv->conf.listen)
		return SH_OK;
	ctx = px_tls_ctx_new(&srv->conf, err);
	if (!ctx)
		return SH_ERR;
	/* Each SSL holds a reference to its context: open connections are unaffected. */
	SSL_CTX_free(srv->ssl_ctx);
	srv->ssl_ctx = ctx;
	return SH_OK;
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
		      void *arg)
{
	struct px_server *srv = arg;
	int one = 1;

	(void)salen;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	px_conn_accept(srv, fd, sa, l == srv->lis_tls);
}

/* Re-enable the listeners a failed accept() paused (the ones still open: after px_listen_stop
 * both are NULL and this does nothing). */
static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct px_server *srv = arg;

	(void)fd;
	(void)what;
	if (srv->lis_tls)
		evconnlistener_enable(srv->lis_tls);
	if (srv->lis_plain)
		evconnlistener_enable(srv->lis_plain);
}

/* accept() failed for a reason libevent does not retry by itself: out of descriptors (EMFILE,
 * ENFILE) or memory. The pending connection stays in the backlog and the listener stays readable,
 * so accepting again at once would spin the loop at 100% CPU (and libevent's default warning would
 * flood the log): pause this listener for 100 ms instead (nginx pauses for 500 ms). Logged on the
 * first failure and every 1000th after. */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
	static unsigned long n_fail;
	struct px_server *srv = arg;
	int e = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { 0, 100000 };

	if (n_fail++ % 1000 == 0)
		px_log("accept: %s: pausing accepts for 100 ms (%lu failure(s) so far)", strerror(e), n_fail);
	evconnlistener_disable(l);
	event_base_once(srv->base, -1, EV_TIMEOUT, accept_resume_cb, srv, &tv);
}

static struct evconnlistener *listen_on(struct px_server *srv, const char *addr, struct sh_err *err)
{
	struct sockaddr_storage sa;
	int salen;
	struct evconnlistener *l;

	if (sh_net_addr(addr, &sa, &salen, err))
		return NULL;
	l = evconnlistener_new_bind(srv->base, accept_cb, srv,
				    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 1024,
				    (struct sockaddr *)&sa, salen);
	if (!l)
		sh_errf(err, "cannot listen on %s: %s", addr, strerror(errno));
	else
		evconnlistener_set_error_cb(l, accept_error_cb);
	return l;
}

int px_listen_start(struct px_server *srv, struct sh_err *err)
{
	if (*srv->conf.listen) {
		srv->ssl_ctx = px_tls_ctx_new(&srv->conf, err);
		if (!srv->ssl_ctx)
			return SH_ERR;
		srv->lis_tls = listen_on(srv, srv->conf.listen, err);
		if (!srv->lis_tls)
			return SH_ERR;
	}
	if (*srv->conf.listen_plain) {
		srv->lis_plain = listen_on(srv, srv->conf.listen_plain, err);
		if (!srv->lis_plain)
			return SH_ERR;
	}
	return SH_OK;
}

void px_listen_stop(struct px_server *srv)
{
	if (srv->lis_tls)
		evconnlistener_free(srv->lis_tls);
	if (srv->lis_plain)
		evconnlistener_free(srv->lis_plain);
	srv->lis_tls = srv->lis_plain = NULL;
}
