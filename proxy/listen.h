/* listen.h: the listeners and the TLS context (TLS 1.2/1.3, ALPN http/1.1, reloadable). */
#ifndef PX_LISTEN_H
#define PX_LISTEN_H

#include "px.h"

/* Build a TLS context from the configured certificate and key. NULL with err on failure. */
SSL_CTX *px_tls_ctx_new(const struct px_conf *c, struct sh_err *err);

/* Re-read certificate and key; on success swap the context (open connections keep theirs).
 * On failure the old one stays and err says why. */
int px_tls_reload(struct px_server *srv, struct sh_err *err);

int px_listen_start(struct px_server *srv, struct sh_err *err);
void px_listen_stop(struct px_server *srv);

#endif
