/*
 * relay.h - the wiring of one hamr node: SMTP sessions propose Enqueue
 * entries through consensus, every node applies them to the queue state
 * machine, and the leader schedules leases and delivers through the SMTP
 * client pool, proposing an Outcome for every attempt.
 *
 * Owns (relay.c): every part of the node (raft, the queue, the proposer, the
 * directory, the disk guard, the listeners, the delivery pool, the timers),
 * their start in order and their close, each part counted as it closes.
 * May call: every module of node/ and every lower layer. Nothing calls into
 * relay.c but hamrd; the other relay_*.c files are called by it (through the
 * callbacks it registers) and share struct relay (relay_internal.h).
 */
#ifndef HAMR_NODE_RELAY_H
#define HAMR_NODE_RELAY_H

#include <stdbool.h>

#include <uv.h>

#include "node/config.h"

struct relay;

/*
 * relay_start - build and start everything the config describes on loop:
 * queue, raft (bootstrapping a pristine data directory), the delivery pool,
 * the SMTP and control listeners and the scheduler. cfg is borrowed for the
 * relay's lifetime. On error writes a sentence into err.
 */
int relay_start(uv_loop_t *loop,
                const struct hamr_config *cfg,
                struct relay **out,
                char *err,
                size_t errlen);

/*
 * relay_stop - stop listening, fail or finish what is in flight, close raft,
 * then call done(arg) and free the relay. Idempotent.
 */
void relay_stop(struct relay *r, void (*done)(void *arg), void *arg);

/* relay_reload - SIGHUP: read the TLS certificate and key and the credentials file again. */
void relay_reload(struct relay *r);

/* relay_failed - true once the node hit an error that it cannot carry on from. */
bool relay_failed(const struct relay *r);

#endif
