/* forward.h: the last stage: send the request to an engine instance and relay its response as it
 * arrives (event by event for text/event-stream), with backpressure, one retry on another
 * instance when an engine fails before its first byte, and a final error event when one fails
 * mid-stream. */
#ifndef PX_FORWARD_H
#define PX_FORWARD_H

#include "px.h"

struct px_upconn;

int px_forward_stage(struct px_req *r);

/* Install the response parser and callbacks on a new upstream connection. */
void px_forward_setup(struct px_upconn *uc);

#endif
