/*
 * relay_fixture.c - a zeroed struct relay over an empty queue, shared by the
 * unit tests of node/relay*.c (see relay_fixture.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "queue/queue.h"
#include "relay_fixture.h"

/* relay_fx_new - a relay with cfg and a new queue, everything else zero. */
struct relay_fx *relay_fx_new(void)
{
    struct relay_fx *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    fx->r.cfg = &fx->cfg;
    fx->r.queue = queue_new();
    assert_non_null(fx->r.queue);
    return fx;
}

/* relay_fx_free - the queue, then fx. */
struct relay_fx *relay_fx_free(struct relay_fx *fx)
{
    if (fx != NULL) {
        fx->r.queue = queue_free(fx->r.queue);
        free(fx);
    }
    return NULL;
}

int relay_fx_setup(void **state)
{
    *state = relay_fx_new();
    return 0;
}

int relay_fx_teardown(void **state)
{
    *state = relay_fx_free(*state);
    return 0;
}
