/* auth.h: users and API keys. Keys are never stored or logged: the configuration holds their
 * SHA-256 digests, and a presented key's digest is compared with every user's in constant time. */
#ifndef PX_AUTH_H
#define PX_AUTH_H

#include "px.h"

/* srv->users from the configuration; one "anonymous" user with user_defaults when none. */
void px_users_init(struct px_server *srv);
void px_users_release(struct px_server *srv);

/* The auth stage: Authorization: Bearer KEY -> r->user, or 401 invalid_api_key. */
int px_auth_stage(struct px_req *r);

/* `kvgate hash-key [KEY]`: prints the hex SHA-256 of KEY (or of one line read from standard input,
 * which keeps the key out of `ps` and shell history). */
int px_hashkey_main(int argc, char **argv);

#endif
