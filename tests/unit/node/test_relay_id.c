/*
 * test_relay_id.c - queue ids (relay_queue_id): unique across nodes and
 * counters in the same millisecond, whatever the node ids.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "util/err.h"
#include "node/relay_internal.h"

/* Nodes 1 and 4097 differ only above the low 12 bits: their ids must differ. */
static void test_node_ids_above_4095(void **state)
{
    (void)state;
    char a[QUEUE_ID_MAX], b[QUEUE_ID_MAX];
    uint64_t ms = 1765000000000ull;
    assert_int_equal(relay_queue_id(ms, 1, 42, a, sizeof(a)), 0);
    assert_int_equal(relay_queue_id(ms, 4097, 42, b, sizeof(b)), 0);
    assert_string_not_equal(a, b);
    assert_int_equal(relay_queue_id(ms, 0x1001001, 42, a, sizeof(a)), 0);
    assert_string_not_equal(a, b);
    assert_int_equal(relay_queue_id(ms, UINT64_MAX, 0xFFFFF, a, sizeof(a)), 0);
    assert_int_equal(strlen(a), 11 + 16 + 5);
}

/* Up to node 4095 the id keeps its 19-character form: ms, node, counter. */
static void test_format(void **state)
{
    (void)state;
    char id[QUEUE_ID_MAX];
    assert_int_equal(relay_queue_id(0x123456789ABull, 3, 0x12345, id, sizeof(id)), 0);
    assert_string_equal(id, "123456789AB00312345");
    assert_int_equal(relay_queue_id(0x123456789ABull, 0xFFF, 0x112345, id, sizeof(id)), 0);
    assert_string_equal(id, "123456789ABFFF12345");
    assert_int_equal(relay_queue_id(0, 3, 0, id, 10), HAMR_EINVAL);
}

/* Every (node, counter) pair of a small grid gives a distinct id in one millisecond. */
static void test_grid_unique(void **state)
{
    (void)state;
    static const uint64_t nodes[] = {1,    2,    15,    16,    255,     256,          4095,
                                     4096, 4097, 65535, 65536, 1048577, 4294967297ull};
    enum { NN = sizeof(nodes) / sizeof(nodes[0]), NC = 40 };
    static char ids[NN * NC][QUEUE_ID_MAX];
    size_t n = 0;
    for (size_t i = 0; i < NN; i++)
        for (uint64_t c = 0; c < NC; c++)
            assert_int_equal(
                relay_queue_id(1765000000000ull, nodes[i], c * 0x1001, ids[n++], QUEUE_ID_MAX), 0);
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            assert_string_not_equal(ids[i], ids[j]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node_ids_above_4095),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_grid_unique),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
