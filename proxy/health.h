/* health.h: active health checks. Every health_interval_ms each engine instance gets a fresh
 * connection and `GET /health`: 200 passes (and re-admits an ejected instance); a 503 whose body
 * says "draining" stops new requests to it without counting as a failure; anything else (refused,
 * timed out, another status) is a failure, and health_fails in a row eject it. Until an instance's
 * models are known, a passing check is followed by `GET /v1/models` on the same connection, which
 * gives its model id and max_model_len. */
#ifndef PX_HEALTH_H
#define PX_HEALTH_H

#include "px.h"

void px_health_start(struct px_server *srv);
void px_health_stop(struct px_server *srv);

#endif
