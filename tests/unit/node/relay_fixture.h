/* relay_fixture.h - a zeroed struct relay over an empty queue, for unit tests of node/relay*.c. */
#ifndef HAMR_TESTS_RELAY_FIXTURE_H
#define HAMR_TESTS_RELAY_FIXTURE_H

#include "node/config.h"
#include "node/relay_internal.h"

/*
 * relay_fx - a relay with only a configuration (zeroed: no limits) and a
 * queue; no raft, store, fetcher or network. Enough for what decides from
 * the queue alone; anything that proposes or talks to a peer needs more.
 */
struct relay_fx {
    struct hamr_config cfg;
    struct relay r;
};

/* relay_fx_new - a relay_fx with a new empty queue (allocation failures fail the test). */
struct relay_fx *relay_fx_new(void);

/* relay_fx_free - free fx and its queue; returns NULL. */
struct relay_fx *relay_fx_free(struct relay_fx *fx);

/* relay_fx_setup, relay_fx_teardown - the same as cmocka group or test fixtures (*state). */
int relay_fx_setup(void **state);
int relay_fx_teardown(void **state);

#endif
