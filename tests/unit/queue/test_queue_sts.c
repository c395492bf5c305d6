/*
 * test_queue_sts.c - the replicated MTA-STS policy cache (queue.h, "The
 * MTA-STS policy cache"; queue/queue_sts.c): StsPolicy entries applied and
 * found, newer and older fetches, expiry pruning on the entry's timestamp,
 * eviction from a full table, every validation rule refused as a command,
 * the level gate (below QUEUE_LEVEL_STS refused; a build of format 3 stops
 * at the kind), snapshot round trips and the digest, restore checks, the
 * encoder queue_entry_sts, allocation failures, and a random sequence
 * checked against a naive model of the rules.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "proto/proto_frame.h"
#include "queue/queue.h"
#include "queue/queue_entry.h"
#include "queue_fixture.h"

#define T0 1700000000000ull
#define SEC 1000ull
#define DAY (86400ull * SEC)

static const char *const mx_default[] = {"mx1.example.net", "*.example.net"};

/* sts_queue - a queue at QUEUE_LEVEL_STS. */
static struct queue *sts_queue(void)
{
    struct queue *q = queue_new();
    assert_non_null(q);
    assert_int_equal(fx_level(q, T0 - DAY, QUEUE_LEVEL_STS).status, 0);
    assert_int_equal(queue_cluster_level(q), QUEUE_LEVEL_STS);
    return q;
}

static int setup(void **state)
{
    *state = sts_queue();
    return 0;
}

static int teardown(void **state)
{
    queue_free(*state);
    return 0;
}

/* pol - a valid enforce policy for domain, fetched at fetched, cached max_age seconds. */
static struct queue_entry_sts_args pol(const char *domain, uint64_t fetched, uint32_t max_age)
{
    return (struct queue_entry_sts_args){.domain = domain,
                                         .id = "20260101T000000",
                                         .mode = QUEUE_STS_ENFORCE,
                                         .mx = mx_default,
                                         .n_mx = HAMR_ARRAY_LEN(mx_default),
                                         .max_age_s = max_age,
                                         .fetched_at_ms = fetched};
}

/* sts_pack - the packed entry of a at ts (malloc'd). */
static uint8_t *sts_pack(const struct queue_entry_sts_args *a, uint64_t ts, size_t *len)
{
    uint8_t *b = NULL;
    assert_int_equal(queue_entry_sts(a, ts, NULL, &b, len), 0);
    assert_int_equal(*len % PROTO_ENTRY_ALIGN, 0);
    return b;
}

/* sts_apply - pack and apply a at ts; queue_apply must return 0. */
static struct queue_apply_result sts_apply(struct queue *q,
                                           uint64_t ts,
                                           const struct queue_entry_sts_args *a)
{
    size_t len;
    uint8_t *b = sts_pack(a, ts, &len);
    return fx_apply(q, b, len);
}

/* refused_admin - an entry that changes nothing but the counter and the timestamp. */
static void refused_admin(struct queue *q, uint64_t ts)
{
    assert_int_equal(fx_admin(q, ts, HAMR__ADMIN__OP__HOLD, "nope").status, HAMR_ENOTFOUND);
}

/* digest_of - the queue's digest as a string. */
static void digest_of(const struct queue *q, char hex[65])
{
    queue_digest(q, hex);
    assert_int_equal(strlen(hex), 64);
}

/* assert_same_digest - a and b hash alike. */
static void assert_same_digest(const struct queue *a, const struct queue *b)
{
    char da[65], db[65];
    digest_of(a, da);
    digest_of(b, db);
    assert_string_equal(da, db);
}

/* fetched_of - fetched_at_ms of domain's policy, or 0 if there is none. */
static uint64_t fetched_of(const struct queue *q, const char *domain)
{
    const struct queue_sts *p = queue_sts_find(q, domain);
    return p ? p->fetched_at_ms : 0;
}

/* ------------------------------------------------------------------------
 * Apply and find
 * ------------------------------------------------------------------------ */

/* A policy is kept in normal form and found in any case, with or without a trailing dot. */
static void test_sts_apply_find(void **state)
{
    struct queue *q = *state;
    assert_int_equal(queue_sts_count(q), 0);
    assert_null(queue_sts_find(q, "example.com"));
    static const char *const mx[] = {"MX1.Example.COM.", "*.Mail.example.com", "mx2.example.com"};
    struct queue_entry_sts_args a = {.domain = "Example.COM.",
                                     .id = "abcXYZ0123",
                                     .mode = QUEUE_STS_TESTING,
                                     .mx = mx,
                                     .n_mx = 3,
                                     .max_age_s = 604800,
                                     .fetched_at_ms = T0 - 5};
    assert_int_equal(sts_apply(q, T0, &a).status, 0);
    assert_int_equal(queue_sts_count(q), 1);
    static const char *const keys[] = {"example.com", "EXAMPLE.com", "example.com.",
                                       "eXample.COM."};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(keys); i++) {
        const struct queue_sts *p = queue_sts_find(q, keys[i]);
        if (p == NULL)
            fail_msg("%s: not found", keys[i]);
        assert_string_equal(p->domain, "example.com");
        assert_string_equal(p->id, "abcXYZ0123");
        assert_int_equal(p->mode, QUEUE_STS_TESTING);
        assert_int_equal(p->n_mx, 3);
        assert_string_equal(p->mx[0], "mx1.example.com");
        assert_string_equal(p->mx[1], "*.mail.example.com");
        assert_string_equal(p->mx[2], "mx2.example.com");
        assert_int_equal(p->max_age_s, 604800);
        assert_int_equal(p->fetched_at_ms, T0 - 5);
        assert_int_equal(p->expires_at_ms, T0 - 5 + 604800 * SEC);
    }
    static const char *const misses[] = {
        "example.org", "mx1.example.com", "com", "example.com..", "", "xample.com"};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(misses); i++)
        if (queue_sts_find(q, misses[i]) != NULL)
            fail_msg("%s: found", misses[i]);
    assert_null(queue_sts_find(q, NULL));

    /* Mode none with no patterns is a policy too (the domain withdrew it). */
    struct queue_entry_sts_args none = {.domain = "b.example",
                                        .id = "1",
                                        .mode = QUEUE_STS_NONE,
                                        .max_age_s = 0,
                                        .fetched_at_ms = T0 + 1};
    assert_int_equal(sts_apply(q, T0 + 1, &none).status, 0);
    assert_int_equal(queue_sts_count(q), 2);
    const struct queue_sts *p = queue_sts_find(q, "b.example");
    assert_non_null(p);
    assert_int_equal(p->mode, QUEUE_STS_NONE);
    assert_int_equal(p->n_mx, 0);
    assert_int_equal(p->expires_at_ms, T0 + 1);

    /* A policy fetched at the end of time: its expiry saturates. */
    struct queue_entry_sts_args late = pol("late.example", UINT64_MAX - 1, 10);
    assert_int_equal(sts_apply(q, T0 + 2, &late).status, 0);
    assert_int_equal(queue_sts_find(q, "late.example")->expires_at_ms, UINT64_MAX);
}

/* foreach_cb - collect domains into a comma list; stop after arg's limit. */
struct walk {
    char out[256];
    size_t seen, stop_after;
};

static int walk_cb(void *arg, const struct queue_sts *p)
{
    struct walk *w = arg;
    size_t n = strlen(w->out);
    snprintf(w->out + n, sizeof(w->out) - n, "%s%s", n ? "," : "", p->domain);
    return ++w->seen == w->stop_after;
}

/* queue_sts_foreach walks in domain order and stops when asked. */
static void test_sts_foreach(void **state)
{
    struct queue *q = *state;
    static const char *const domains[] = {"c.example", "A.example", "b.example", "aa.example"};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(domains); i++) {
        struct queue_entry_sts_args a = pol(domains[i], T0, 3600);
        assert_int_equal(sts_apply(q, T0 + i, &a).status, 0);
    }
    struct walk w = {.stop_after = 0};
    queue_sts_foreach(q, walk_cb, &w);
    assert_string_equal(w.out, "a.example,aa.example,b.example,c.example");
    struct walk two = {.stop_after = 2};
    queue_sts_foreach(q, walk_cb, &two);
    assert_string_equal(two.out, "a.example,aa.example");
}

/* ------------------------------------------------------------------------
 * Newer and older fetches
 * ------------------------------------------------------------------------ */

/* Table: a fetch replaces the held one unless it is older; an older one is a no-op. */
static void test_sts_replace(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        uint64_t fetched;
        const char *id;
        const char *want_id;
        uint64_t want_fetched;
    } steps[] = {
        {"first", T0, "one", "one", T0},
        {"newer", T0 + 10, "two", "two", T0 + 10},
        {"older applied late", T0 + 5, "late", "two", T0 + 10},
        {"much older", 1, "ancient", "two", T0 + 10},
        {"same fetch time", T0 + 10, "three", "three", T0 + 10},
        {"newer again", T0 + 20, "four", "four", T0 + 20},
    };
    struct queue *q = sts_queue();
    struct queue *ref = sts_queue();
    char ref_id[64] = "";
    uint64_t ref_fetched = 0;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(steps); i++) {
        uint64_t ts = T0 + 100 + i;
        struct queue_entry_sts_args a = pol("Example.com", steps[i].fetched, 86400);
        a.id = steps[i].id;
        if (sts_apply(q, ts, &a).status != 0)
            fail_msg("%s: refused", steps[i].label);
        const struct queue_sts *p = queue_sts_find(q, "example.com");
        assert_non_null(p);
        if (strcmp(p->id, steps[i].want_id) != 0 || p->fetched_at_ms != steps[i].want_fetched)
            fail_msg("%s: id %s fetched %llu", steps[i].label, p->id,
                     (unsigned long long)p->fetched_at_ms);
        assert_int_equal(queue_sts_count(q), 1);
        /* The reference applies only the steps that take effect: a no-op changes nothing else. */
        if (strcmp(ref_id, steps[i].want_id) != 0 || ref_fetched != steps[i].want_fetched) {
            assert_int_equal(sts_apply(ref, ts, &a).status, 0);
            hamr_strlcpy(ref_id, steps[i].want_id, sizeof(ref_id));
            ref_fetched = steps[i].want_fetched;
        } else {
            refused_admin(ref, ts);
        }
        assert_same_digest(q, ref);
    }
    queue_free(q);
    queue_free(ref);
}

/* ------------------------------------------------------------------------
 * Expiry
 * ------------------------------------------------------------------------ */

/* Every StsPolicy entry drops the policies expired at its timestamp (strictly before it). */
static void test_sts_prune(void **state)
{
    struct queue *q = *state;
    struct queue_entry_sts_args a = pol("a.example", T0, 10);  /* expires T0 + 10 s */
    struct queue_entry_sts_args b = pol("b.example", T0, 100); /* T0 + 100 s */
    struct queue_entry_sts_args c = pol("c.example", T0, 1000);
    assert_int_equal(sts_apply(q, T0, &a).status, 0);
    assert_int_equal(sts_apply(q, T0, &b).status, 0);
    assert_int_equal(sts_apply(q, T0, &c).status, 0);
    assert_int_equal(queue_sts_count(q), 3);

    /* Other entries never prune: apply reads no clock, only StsPolicy entries expire policies. */
    refused_admin(q, T0 + 500 * SEC);
    assert_int_equal(queue_sts_count(q), 3);
    assert_non_null(queue_sts_find(q, "a.example")); /* found, expired: the caller checks */

    /* At exactly the expiry the policy is still valid. */
    struct queue_entry_sts_args d = pol("d.example", T0 + 10 * SEC, 5000);
    assert_int_equal(sts_apply(q, T0 + 10 * SEC, &d).status, 0);
    assert_int_equal(queue_sts_count(q), 4);
    assert_non_null(queue_sts_find(q, "a.example"));

    /* At the boundary while an older one is due: only the one strictly before goes. */
    struct queue *edge = sts_queue();
    struct queue_entry_sts_args x = pol("x.example", T0, 5);
    struct queue_entry_sts_args y = pol("y.example", T0, 10);
    struct queue_entry_sts_args z = pol("z.example", T0 + 10 * SEC, 60);
    assert_int_equal(sts_apply(edge, T0, &x).status, 0);
    assert_int_equal(sts_apply(edge, T0, &y).status, 0);
    assert_int_equal(sts_apply(edge, T0 + 10 * SEC, &z).status, 0);
    assert_null(queue_sts_find(edge, "x.example"));
    assert_non_null(queue_sts_find(edge, "y.example"));
    assert_int_equal(queue_sts_count(edge), 2);
    queue_free(edge);

    /* One ms later it goes, and only it. */
    struct queue_entry_sts_args d2 = pol("d.example", T0 + 10 * SEC + 1, 5000);
    assert_int_equal(sts_apply(q, T0 + 10 * SEC + 1, &d2).status, 0);
    assert_null(queue_sts_find(q, "a.example"));
    assert_non_null(queue_sts_find(q, "b.example"));
    assert_int_equal(queue_sts_count(q), 3);

    /* A no-op (an older fetch) prunes too; several go at once. */
    struct queue_entry_sts_args old = pol("d.example", T0, 5000);
    assert_int_equal(sts_apply(q, T0 + 2000 * SEC, &old).status, 0);
    assert_null(queue_sts_find(q, "b.example"));
    assert_null(queue_sts_find(q, "c.example"));
    assert_int_equal(fetched_of(q, "d.example"), T0 + 10 * SEC + 1);
    assert_int_equal(queue_sts_count(q), 1);

    /* A new policy already expired at its entry's timestamp is not kept. */
    struct queue_entry_sts_args stale = pol("e.example", T0, 1);
    assert_int_equal(sts_apply(q, T0 + 2000 * SEC, &stale).status, 0);
    assert_null(queue_sts_find(q, "e.example"));

    /* A newer fetch that has already run out removes the domain's policy. */
    struct queue_entry_sts_args gone = pol("d.example", T0 + 20 * SEC, 0);
    assert_int_equal(sts_apply(q, T0 + 2000 * SEC, &gone).status, 0);
    assert_null(queue_sts_find(q, "d.example"));
    assert_int_equal(queue_sts_count(q), 0);

    /* The state is that of a queue that never held the pruned policies. */
    struct queue *ref = sts_queue();
    refused_admin(ref, T0);
    refused_admin(ref, T0);
    refused_admin(ref, T0);
    refused_admin(ref, T0 + 500 * SEC);
    refused_admin(ref, T0 + 10 * SEC);
    refused_admin(ref, T0 + 10 * SEC + 1);
    refused_admin(ref, T0 + 2000 * SEC);
    refused_admin(ref, T0 + 2000 * SEC);
    refused_admin(ref, T0 + 2000 * SEC);
    assert_same_digest(q, ref);
    queue_free(ref);
}

/* ------------------------------------------------------------------------
 * A full table
 * ------------------------------------------------------------------------ */

/* full_name - the i-th domain of the full table: "d00000.example" ... */
static void full_name(char *out, size_t cap, size_t i)
{
    snprintf(out, cap, "d%05zu.example", i);
}

/*
 * The table holds QUEUE_STS_MAX policies; a new domain then pushes out the
 * one that expires first, the lowest domain among equals, or is itself
 * dropped when it would be that one. A known domain is replaced in place.
 */
static void test_sts_evict_full(void **state)
{
    struct queue *q = *state;
    char name[32];
    /* Every policy expires at T0 + 1 day, but d05000 (half a day) and d07000 (also half). */
    for (size_t i = 0; i < QUEUE_STS_MAX; i++) {
        full_name(name, sizeof(name), i);
        struct queue_entry_sts_args a = pol(name, T0, i == 5000 || i == 7000 ? 43200 : 86400);
        assert_int_equal(sts_apply(q, T0, &a).status, 0);
    }
    assert_int_equal(queue_sts_count(q), QUEUE_STS_MAX);

    static const struct {
        const char *label;
        const char *domain;
        uint64_t fetched;
        uint32_t max_age;
        const char *want_gone; /* NULL: nothing */
        const char *want_kept; /* still there */
        bool want_new_kept;
    } steps[] = {
        {"first to expire goes", "z1.example", T0 + 1, 86400, "d05000.example", "d07000.example",
         true},
        {"then the next one", "z2.example", T0 + 1, 86400, "d07000.example", "d00000.example",
         true},
        {"a tie: the lowest domain", "z3.example", T0 + 1, 86400, "d00000.example",
         "d00001.example", true},
        {"the new one expires first: it goes", "z4.example", T0, 3600, NULL, "d00001.example",
         false},
        {"the new one ties, lower domain: it goes", "a.example", T0, 86400, NULL, "d00001.example",
         false},
        {"the new one ties, higher domain: the old goes", "e.example", T0, 86400, "d00001.example",
         "d00002.example", true},
        {"a known domain is replaced, nothing goes", "d00002.example", T0 + 2, 60, NULL,
         "d00003.example", true},
        {"the replaced one now expires first", "z5.example", T0 + 3, 86400, "d00002.example",
         "d00003.example", true},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(steps); i++) {
        struct queue_entry_sts_args a = pol(steps[i].domain, steps[i].fetched, steps[i].max_age);
        assert_int_equal(sts_apply(q, T0 + 10 + i, &a).status, 0);
        if (queue_sts_count(q) != QUEUE_STS_MAX)
            fail_msg("%s: count %zu", steps[i].label, queue_sts_count(q));
        if (steps[i].want_gone && queue_sts_find(q, steps[i].want_gone) != NULL)
            fail_msg("%s: %s kept", steps[i].label, steps[i].want_gone);
        if (queue_sts_find(q, steps[i].want_kept) == NULL)
            fail_msg("%s: %s gone", steps[i].label, steps[i].want_kept);
        if ((fetched_of(q, steps[i].domain) == steps[i].fetched) != steps[i].want_new_kept)
            fail_msg("%s: new policy %s", steps[i].label,
                     steps[i].want_new_kept ? "not kept" : "kept");
    }

    /* The whole table survives a snapshot, with the same digest and order. */
    struct queue *r = fx_snapshot_roundtrip(q);
    assert_int_equal(queue_sts_count(r), QUEUE_STS_MAX);
    assert_same_digest(q, r);
    struct walk w1 = {.stop_after = 5}, w2 = {.stop_after = 5};
    queue_sts_foreach(q, walk_cb, &w1);
    queue_sts_foreach(r, walk_cb, &w2);
    assert_string_equal(w1.out, w2.out);
    assert_string_equal(w1.out,
                        "d00003.example,d00004.example,d00005.example,d00006.example,"
                        "d00007.example");
    /* And the restored copy evicts as the original does. */
    struct queue_entry_sts_args a = pol("z6.example", T0 + 4, 86400);
    assert_int_equal(sts_apply(q, T0 + 100, &a).status, 0);
    assert_int_equal(sts_apply(r, T0 + 100, &a).status, 0);
    assert_null(queue_sts_find(q, "d00003.example"));
    assert_same_digest(q, r);

    /* Once they expire, one entry prunes the lot. */
    struct queue_entry_sts_args last = pol("last.example", T0 + 2 * DAY, 60);
    assert_int_equal(sts_apply(q, T0 + 2 * DAY, &last).status, 0);
    assert_int_equal(queue_sts_count(q), 1);
    queue_free(r);
}

/* ------------------------------------------------------------------------
 * Refusals
 * ------------------------------------------------------------------------ */

/* Table: every validation rule; a refused policy is a refused command that changes nothing. */
static void test_sts_refusals(void **state)
{
    (void)state;
    static char d253[254], d254[255], label63[80], label64[80], id32[33], id33[34], mx253[254];
    static char mx254[255];
    /* 253 octets: labels of 63 with dots ("x" * 63 + ".") * 3 + "x" * 61. */
    memset(d253, 0, sizeof(d253));
    for (size_t i = 0; i < 253; i++)
        d253[i] = (i % 64 == 63) ? '.' : 'x';
    memcpy(d254, d253, 253);
    d254[253] = 'y';
    d254[254] = '\0';
    memset(label63, 'a', 63);
    memcpy(label63 + 63, ".example", sizeof(".example"));
    memset(label64, 'a', 64);
    memcpy(label64 + 64, ".example", sizeof(".example"));
    memset(id32, 'A', 32);
    memset(id33, '7', 33);
    memcpy(mx253, "*.", 2);
    memcpy(mx253 + 2, d253 + 2, 251);
    mx253[253] = '\0';
    memcpy(mx254, "*.", 2);
    memcpy(mx254 + 2, d254 + 2, 252); /* 254 octets in all */
    static const char *mx64[64], *mx65[65];
    for (size_t i = 0; i < 65; i++) {
        if (i < 64)
            mx64[i] = "mx.example.net";
        mx65[i] = "mx.example.net";
    }

    enum { OK = 0 };
    struct {
        const char *label;
        const char *domain;
        const char *id;
        int mode;
        const char *mx1; /* one pattern, or NULL for the list below */
        const char *const *mx;
        size_t n_mx;
        uint32_t max_age;
        int want;
    } cases[] = {
        /* Accepted at the bounds. */
        {"253 octets", d253, "1", 2, "mx.example.net", NULL, 0, 60, OK},
        {"253 octets and a dot", NULL, "1", 2, "mx.example.net", NULL, 0, 60, OK},
        {"label of 63", label63, "1", 2, "mx.example.net", NULL, 0, 60, OK},
        {"single label", "localhost", "1", 2, "mx.example.net", NULL, 0, 60, OK},
        {"digits and hyphens", "0-9.x-y.example", "1", 2, "mx.example.net", NULL, 0, 60, OK},
        {"id of 32", "a.example", id32, 2, "mx.example.net", NULL, 0, 60, OK},
        {"64 patterns", "a.example", "1", 2, NULL, mx64, 64, 60, OK},
        {"pattern of 253", "a.example", "1", 2, mx253, NULL, 0, 60, OK},
        {"max_age at the bound", "a.example", "1", 2, "mx.example.net", NULL, 0,
         QUEUE_STS_MAX_AGE_MAX, OK},
        {"mode testing", "a.example", "1", 1, "mx.example.net", NULL, 0, 60, OK},
        /* The domain. */
        {"empty domain", "", "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"only a dot", ".", "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"254 octets", d254, "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"label of 64", label64, "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"empty label", "a..example", "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"leading dot", ".a.example", "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"two trailing dots", "a.example..", "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"leading hyphen", "-a.example", "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"trailing hyphen", "a-.example", "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"underscore", "a_b.example", "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"space", "a b.example", "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"wildcard domain", "*.example", "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"8-bit", "\xc3\xa9.example", "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"control", "a\n.example", "1", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        /* The id. */
        {"empty id", "a.example", "", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"id of 33", "a.example", id33, 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"id with a hyphen", "a.example", "2026-01", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"id with a space", "a.example", "a b", 2, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        /* The mode. */
        {"mode 3", "a.example", "1", 3, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"mode -1", "a.example", "1", -1, "mx.example.net", NULL, 0, 60, HAMR_EINVAL},
        /* The patterns. */
        {"65 patterns", "a.example", "1", 2, NULL, mx65, 65, 60, HAMR_EINVAL},
        {"empty pattern", "a.example", "1", 2, "", NULL, 0, 60, HAMR_EINVAL},
        {"bare star", "a.example", "1", 2, "*", NULL, 0, 60, HAMR_EINVAL},
        {"star dot", "a.example", "1", 2, "*.", NULL, 0, 60, HAMR_EINVAL},
        {"star inside", "a.example", "1", 2, "a*.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"two stars", "a.example", "1", 2, "*.*.example.net", NULL, 0, 60, HAMR_EINVAL},
        {"star without dot", "a.example", "1", 2, "*example.net", NULL, 0, 60, HAMR_EINVAL},
        {"pattern of 254", "a.example", "1", 2, mx254, NULL, 0, 60, HAMR_EINVAL},
        {"pattern with a colon", "a.example", "1", 2, "mx.example.net:25", NULL, 0, 60,
         HAMR_EINVAL},
        /* max_age. */
        {"max_age above the bound", "a.example", "1", 2, "mx.example.net", NULL, 0,
         QUEUE_STS_MAX_AGE_MAX + 1, HAMR_EINVAL},
        {"max_age far above", "a.example", "1", 2, "mx.example.net", NULL, 0, UINT32_MAX,
         HAMR_EINVAL},
    };
    static char d253dot[255];
    memcpy(d253dot, d253, 253);
    d253dot[253] = '.';
    cases[1].domain = d253dot;

    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        /* Both queues hold an expired policy: a refused entry must not prune it. */
        struct queue *q = sts_queue();
        struct queue *ref = sts_queue();
        struct queue_entry_sts_args held = pol("held.example", T0, 1);
        assert_int_equal(sts_apply(q, T0, &held).status, 0);
        assert_int_equal(sts_apply(ref, T0, &held).status, 0);
        const char *one[1] = {cases[i].mx1};
        struct queue_entry_sts_args a = {.domain = cases[i].domain,
                                         .id = cases[i].id,
                                         .mode = (enum queue_sts_mode)cases[i].mode,
                                         .mx = cases[i].mx ? cases[i].mx : one,
                                         .n_mx = cases[i].mx ? cases[i].n_mx : 1,
                                         .max_age_s = cases[i].max_age,
                                         .fetched_at_ms = T0 + DAY};
        struct queue_apply_result r = sts_apply(q, T0 + DAY, &a);
        if (r.status != cases[i].want)
            fail_msg("%s: status %d, want %d", cases[i].label, r.status, cases[i].want);
        if (cases[i].want == OK) {
            assert_int_equal(queue_sts_count(q), 1);
            assert_null(queue_sts_find(q, "held.example"));
            assert_non_null(queue_sts_find(q, cases[i].domain));
        } else {
            assert_int_equal(queue_sts_count(q), 1);
            assert_non_null(queue_sts_find(q, "held.example"));
            refused_admin(ref, T0 + DAY);
            assert_same_digest(q, ref);
        }
        queue_free(q);
        queue_free(ref);
    }
}

/* ------------------------------------------------------------------------
 * The level gate
 * ------------------------------------------------------------------------ */

/*
 * Below QUEUE_LEVEL_STS a build that knows the kind refuses the entry as a
 * command: the cache stays empty, the state is that of a refused Admin.
 */
static void test_sts_below_level(void **state)
{
    (void)state;
    for (uint32_t level = 1; level < QUEUE_LEVEL_STS; level++) {
        struct queue *q = queue_new();
        struct queue *ref = queue_new();
        assert_non_null(q);
        assert_non_null(ref);
        if (level > 1) {
            assert_int_equal(fx_level(q, T0, level).status, 0);
            assert_int_equal(fx_level(ref, T0, level).status, 0);
        }
        struct queue_entry_sts_args a = pol("a.example", T0, 3600);
        struct queue_apply_result r = sts_apply(q, T0 + 1, &a);
        if (r.status != HAMR_EVERSION)
            fail_msg("level %u: status %d", level, r.status);
        assert_int_equal(queue_sts_count(q), 0);
        refused_admin(ref, T0 + 1);
        assert_same_digest(q, ref);
        /* Raised to the level, the same entry takes effect. */
        assert_int_equal(fx_level(q, T0 + 2, QUEUE_LEVEL_STS).status, 0);
        assert_int_equal(sts_apply(q, T0 + 3, &a).status, 0);
        assert_non_null(queue_sts_find(q, "a.example"));
        queue_free(q);
        queue_free(ref);
    }
}

/*
 * A build of format 3 does not know the kind: like its decoder, apply
 * refuses the entry (HAMR_EVERSION, the node must stop) with the state
 * untouched, whatever the level it was told. This build decodes it.
 */
static void test_sts_older_build(void **state)
{
    (void)state;
    struct queue *q = queue_new();
    assert_non_null(q);
    queue_set_format_max(q, 3);
    assert_int_equal(fx_level(q, T0, 3).status, 0);
    /* Level 4 is beyond it: refused as a command. */
    assert_int_equal(fx_level(q, T0 + 1, QUEUE_LEVEL_STS).status, HAMR_EVERSION);
    assert_int_equal(queue_cluster_level(q), 3);
    struct queue_stats st;
    queue_get_stats(q, &st);
    uint64_t applied = st.applied;
    char before[65], after[65];
    digest_of(q, before);

    size_t len;
    struct queue_entry_sts_args a = pol("a.example", T0, 3600);
    uint8_t *b = sts_pack(&a, T0 + 2, &len);
    struct queue_apply_result r;
    assert_int_equal(queue_apply(q, b, len, &r), HAMR_EVERSION);
    /* Nothing moved: not the counter, not the timestamp, not the cache. */
    digest_of(q, after);
    assert_string_equal(before, after);
    queue_get_stats(q, &st);
    assert_int_equal(st.applied, applied);
    assert_int_equal(queue_sts_count(q), 0);

    /* This build decodes the kind (format 1 on the wire: only the kind is new). */
    Hamr__Entry *e = NULL;
    assert_int_equal(proto_entry_unpack(b, len, &e), 0);
    assert_int_equal(e->format_version, PROTO_FORMAT_VERSION);
    assert_int_equal(e->cmd_case, HAMR__ENTRY__CMD_STS_POLICY);
    hamr__entry__free_unpacked(e, NULL);
    free(b);
    assert_true(PROTO_FORMAT_VERSION_MAX >= QUEUE_LEVEL_STS);
    queue_free(q);
}

/* ------------------------------------------------------------------------
 * Snapshot, restore and digest
 * ------------------------------------------------------------------------ */

/*
 * build_cache_with - a queue at the level with a message and three
 * policies (c.example, then a, then b.example without mx); a is the
 * a.example policy applied second.
 */
static struct queue *build_cache_with(const struct queue_entry_sts_args *a)
{
    struct queue *q = sts_queue();
    struct fx_enq m = {.id = "M", .sender = "a@example.org", .rcpts = {"b@example.com"}};
    assert_int_equal(fx_enqueue(q, T0, &m).status, 0);
    static const char *const mx3[] = {"mx1.c.example", "mx2.c.example", "*.c.example"};
    struct queue_entry_sts_args c = pol("c.example", T0 + 1, 86400);
    c.mx = mx3;
    c.n_mx = 3;
    c.mode = QUEUE_STS_TESTING;
    struct queue_entry_sts_args b = {.domain = "b.example", .id = "x", .fetched_at_ms = T0 + 3};
    assert_int_equal(sts_apply(q, T0 + 1, &c).status, 0);
    assert_int_equal(sts_apply(q, T0 + 2, a).status, 0);
    assert_int_equal(sts_apply(q, T0 + 3, &b).status, 0);
    return q;
}

/* build_cache - build_cache_with the default a.example policy. */
static struct queue *build_cache(void)
{
    struct queue_entry_sts_args a = pol("A.example.", T0 + 2, 3600);
    return build_cache_with(&a);
}

/* collect - up to 16 policies of a cache, in its order. */
struct collect {
    const struct queue_sts *p[16];
    size_t n;
};

static int collect_cb(void *arg, const struct queue_sts *p)
{
    struct collect *c = arg;
    assert_true(c->n < HAMR_ARRAY_LEN(c->p));
    c->p[c->n++] = p;
    return 0;
}

/* assert_same_cache - both caches (16 policies at most) hold equal policies in the same order. */
static void assert_same_cache(const struct queue *x, const struct queue *y)
{
    assert_int_equal(queue_sts_count(x), queue_sts_count(y));
    struct collect cx = {.n = 0}, cy = {.n = 0};
    queue_sts_foreach(x, collect_cb, &cx);
    queue_sts_foreach(y, collect_cb, &cy);
    assert_int_equal(cx.n, queue_sts_count(x));
    assert_int_equal(cy.n, cx.n);
    for (size_t k = 0; k < cx.n; k++) {
        const struct queue_sts *a = cx.p[k], *b = cy.p[k];
        assert_ptr_equal(queue_sts_find(x, a->domain), a);
        assert_string_equal(a->domain, b->domain);
        assert_string_equal(a->id, b->id);
        assert_int_equal(a->mode, b->mode);
        assert_int_equal(a->n_mx, b->n_mx);
        for (size_t i = 0; i < a->n_mx; i++)
            assert_string_equal(a->mx[i], b->mx[i]);
        assert_int_equal(a->max_age_s, b->max_age_s);
        assert_int_equal(a->fetched_at_ms, b->fetched_at_ms);
        assert_int_equal(a->expires_at_ms, b->expires_at_ms);
    }
}

/* The cache is in the snapshot, sorted by domain; a restore gives the same table and digest. */
static void test_sts_snapshot_roundtrip(void **state)
{
    (void)state;
    struct queue *q = build_cache();
    uint8_t *snap;
    size_t len;
    assert_int_equal(queue_snapshot(q, NULL, &snap, &len), 0);
    Hamr__Snapshot *s = NULL;
    assert_int_equal(proto_snapshot_unpack(snap, len, &s), 0);
    assert_int_equal(s->cluster_level, QUEUE_LEVEL_STS);
    assert_int_equal(s->n_sts_policies, 3);
    assert_string_equal(s->sts_policies[0]->domain, "a.example");
    assert_string_equal(s->sts_policies[1]->domain, "b.example");
    assert_string_equal(s->sts_policies[2]->domain, "c.example");
    assert_int_equal(s->sts_policies[2]->n_mx, 3);
    assert_string_equal(s->sts_policies[2]->mx[2], "*.c.example");
    assert_int_equal(s->sts_policies[2]->mode, HAMR__STS_POLICY__MODE__TESTING);
    assert_int_equal(s->sts_policies[2]->max_age, 86400);
    assert_int_equal(s->sts_policies[2]->fetched_at_ms, T0 + 1);
    hamr__snapshot__free_unpacked(s, NULL);

    struct queue *r = queue_new();
    assert_non_null(r);
    assert_int_equal(queue_restore(r, snap, len), 0);
    free(snap);
    assert_same_cache(q, r);
    assert_same_digest(q, r);
    assert_non_null(queue_find(r, "M"));

    /* Both go on alike: the next entry prunes and replaces the same way. */
    struct queue_entry_sts_args a2 = pol("a.example", T0 + 4, 60);
    assert_int_equal(sts_apply(q, T0 + 2 * 3600 * SEC, &a2).status, 0);
    assert_int_equal(sts_apply(r, T0 + 2 * 3600 * SEC, &a2).status, 0);
    assert_null(queue_sts_find(q, "a.example")); /* a newer fetch, already expired */
    assert_null(queue_sts_find(q, "b.example")); /* max_age 0 */
    assert_non_null(queue_sts_find(q, "c.example"));
    assert_same_cache(q, r);
    assert_same_digest(q, r);

    /* Restoring a snapshot without policies empties the cache. */
    struct queue *empty = sts_queue();
    struct queue *back = fx_snapshot_roundtrip(empty);
    assert_int_equal(queue_restore(r, NULL, 0), HAMR_ECORRUPT);
    assert_int_equal(queue_snapshot(empty, NULL, &snap, &len), 0);
    assert_int_equal(queue_restore(r, snap, len), 0);
    free(snap);
    assert_int_equal(queue_sts_count(r), 0);
    assert_null(queue_sts_find(r, "c.example"));
    assert_same_digest(r, empty);
    queue_free(back);
    queue_free(empty);
    queue_free(r);
    queue_free(q);
}

/* The digest covers every field of every policy. */
static void test_sts_digest(void **state)
{
    (void)state;
    struct queue *q = build_cache();
    char base[65];
    digest_of(q, base);
    static const char *const other_mx[] = {"mx1.example.net", "*.example.org"};
    static const char *const fewer_mx[] = {"mx1.example.net"};
    struct {
        const char *label;
        struct queue_entry_sts_args a;
    } variants[] = {
        {"id", pol("A.example.", T0 + 2, 3600)},
        {"mode", pol("A.example.", T0 + 2, 3600)},
        {"a pattern", pol("A.example.", T0 + 2, 3600)},
        {"fewer patterns", pol("A.example.", T0 + 2, 3600)},
        {"max_age", pol("A.example.", T0 + 2, 3601)},
        {"fetched_at_ms", pol("A.example.", T0 + 3, 3600)},
        {"domain", pol("A2.example.", T0 + 2, 3600)},
    };
    variants[0].a.id = "20260101T000001";
    variants[1].a.mode = QUEUE_STS_TESTING;
    variants[2].a.mx = other_mx;
    variants[3].a.mx = fewer_mx;
    variants[3].a.n_mx = 1;
    for (size_t v = 0; v < HAMR_ARRAY_LEN(variants); v++) {
        /* The same history as build_cache with one field of the a.example policy changed. */
        struct queue *o = build_cache_with(&variants[v].a);
        char d[65];
        digest_of(o, d);
        if (strcmp(d, base) == 0)
            fail_msg("%s: same digest", variants[v].label);
        queue_free(o);
    }
    /* And the same history gives the same digest (the check above can fail). */
    struct queue *same = build_cache();
    assert_same_digest(q, same);
    queue_free(same);
    queue_free(q);
}

/* sts_snapshot - a hand-made snapshot at level with the given policies. */
static uint8_t *sts_snapshot(uint32_t level, Hamr__StsPolicy **p, size_t n, size_t *len)
{
    Hamr__Snapshot s = HAMR__SNAPSHOT__INIT;
    s.applied = 9;
    s.last_timestamp_ms = T0;
    s.cluster_level = level;
    s.n_sts_policies = n;
    s.sts_policies = p;
    uint8_t *out;
    assert_int_equal(proto_snapshot_pack(&s, NULL, &out, len), 0);
    return out;
}

/* Table: a snapshot's policies are checked as entries are; a bad one leaves the state alone. */
static void test_sts_restore_checks(void **state)
{
    (void)state;
    static char *mx[] = {"mx.example.net"};
    Hamr__StsPolicy good = HAMR__STS_POLICY__INIT, good2 = HAMR__STS_POLICY__INIT;
    good.domain = "a.example";
    good.id = "1";
    good.mode = HAMR__STS_POLICY__MODE__ENFORCE;
    good.n_mx = 1;
    good.mx = mx;
    good.max_age = 60;
    good.fetched_at_ms = T0;
    good2 = good;
    good2.domain = "b.example";
    Hamr__StsPolicy upper = good, dot = good, bad_id = good, bad_mode = good, bad_age = good,
                    bad_mx = good, upper_mx = good;
    upper.domain = "A.example";
    dot.domain = "a.example.";
    bad_id.id = "a-b";
    bad_mode.mode = (Hamr__StsPolicy__Mode)7;
    bad_age.max_age = QUEUE_STS_MAX_AGE_MAX + 1;
    static char *bad_patterns[] = {"*"};
    bad_mx.mx = bad_patterns;
    static char *upper_patterns[] = {"MX.example.net"};
    upper_mx.mx = upper_patterns;

    Hamr__StsPolicy *ok[] = {&good, &good2};
    Hamr__StsPolicy *unsorted[] = {&good2, &good};
    Hamr__StsPolicy *dup[] = {&good, &good};
    Hamr__StsPolicy *p_upper[] = {&upper}, *p_dot[] = {&dot}, *p_id[] = {&bad_id};
    Hamr__StsPolicy *p_mode[] = {&bad_mode}, *p_age[] = {&bad_age}, *p_mx[] = {&bad_mx};
    Hamr__StsPolicy *p_upper_mx[] = {&upper_mx};
    const struct {
        const char *label;
        uint32_t level;
        Hamr__StsPolicy **p;
        size_t n;
        int want;
    } cases[] = {
        {"two policies", QUEUE_LEVEL_STS, ok, 2, 0},
        {"unsorted (sorted on restore)", QUEUE_LEVEL_STS, unsorted, 2, 0},
        {"policies below the level", QUEUE_LEVEL_STORE, ok, 2, HAMR_ECORRUPT},
        {"policies at level 1 (absent)", 0, ok, 2, HAMR_ECORRUPT},
        {"a repeated domain", QUEUE_LEVEL_STS, dup, 2, HAMR_ECORRUPT},
        {"a domain not in lower case", QUEUE_LEVEL_STS, p_upper, 1, HAMR_ECORRUPT},
        {"a domain with a trailing dot", QUEUE_LEVEL_STS, p_dot, 1, HAMR_ECORRUPT},
        {"a bad id", QUEUE_LEVEL_STS, p_id, 1, HAMR_ECORRUPT},
        {"a bad mode", QUEUE_LEVEL_STS, p_mode, 1, HAMR_ECORRUPT},
        {"a bad max_age", QUEUE_LEVEL_STS, p_age, 1, HAMR_ECORRUPT},
        {"a bad pattern", QUEUE_LEVEL_STS, p_mx, 1, HAMR_ECORRUPT},
        {"a pattern not in lower case", QUEUE_LEVEL_STS, p_upper_mx, 1, HAMR_ECORRUPT},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct queue *q = build_cache();
        char before[65], after[65];
        digest_of(q, before);
        size_t len;
        uint8_t *snap = sts_snapshot(cases[i].level, cases[i].p, cases[i].n, &len);
        int rv = queue_restore(q, snap, len);
        free(snap);
        if (rv != cases[i].want)
            fail_msg("%s: restore %d, want %d", cases[i].label, rv, cases[i].want);
        digest_of(q, after);
        if (rv != 0) {
            assert_string_equal(before, after);
            assert_int_equal(queue_sts_count(q), 3);
            assert_non_null(queue_sts_find(q, "c.example"));
        } else {
            assert_int_equal(queue_sts_count(q), 2);
            assert_non_null(queue_sts_find(q, "a.example"));
            assert_non_null(queue_sts_find(q, "b.example"));
            assert_null(queue_sts_find(q, "c.example"));
            assert_null(queue_find(q, "M"));
        }
        queue_free(q);
    }

    /* A full table restores; one more policy is refused. */
    size_t n = QUEUE_STS_MAX + 1;
    Hamr__StsPolicy *many = calloc(n, sizeof(*many));
    Hamr__StsPolicy **mp = calloc(n, sizeof(*mp));
    char(*names)[32] = calloc(n, sizeof(*names));
    assert_non_null(many);
    assert_non_null(mp);
    assert_non_null(names);
    for (size_t i = 0; i < n; i++) {
        full_name(names[i], sizeof(names[i]), i);
        many[i] = good;
        many[i].domain = names[i];
        mp[i] = &many[i];
    }
    struct queue *q = queue_new();
    size_t len;
    uint8_t *snap = sts_snapshot(QUEUE_LEVEL_STS, mp, QUEUE_STS_MAX, &len);
    assert_int_equal(queue_restore(q, snap, len), 0);
    free(snap);
    assert_int_equal(queue_sts_count(q), QUEUE_STS_MAX);
    snap = sts_snapshot(QUEUE_LEVEL_STS, mp, n, &len);
    assert_int_equal(queue_restore(q, snap, len), HAMR_ECORRUPT);
    free(snap);
    assert_int_equal(queue_sts_count(q), QUEUE_STS_MAX);
    queue_free(q);
    free(names);
    free(mp);
    free(many);
}

/*
 * A snapshot of a level-4 state with policies is refused by a build of
 * format 3 (the level check), and a level-3 snapshot, which has none, is
 * the one an older build writes: it restores here with an empty cache.
 */
static void test_sts_snapshot_older_build(void **state)
{
    (void)state;
    struct queue *q = build_cache();
    uint8_t *snap;
    size_t len;
    assert_int_equal(queue_snapshot(q, NULL, &snap, &len), 0);
    struct queue *old = queue_new();
    assert_non_null(old);
    queue_set_format_max(old, 3);
    assert_int_equal(queue_restore(old, snap, len), HAMR_EVERSION);
    free(snap);
    assert_int_equal(queue_sts_count(old), 0);

    /* An older build's level-3 state (no cache) snapshots to what this build restores. */
    struct fx_enq m = {.id = "M", .sender = "a@example.org", .rcpts = {"b@example.com"}};
    assert_int_equal(fx_level(old, T0, 3).status, 0);
    assert_int_equal(fx_enqueue(old, T0, &m).status, 0);
    assert_int_equal(queue_snapshot(old, NULL, &snap, &len), 0);
    Hamr__Snapshot *s = NULL;
    assert_int_equal(proto_snapshot_unpack(snap, len, &s), 0);
    assert_int_equal(s->n_sts_policies, 0);
    hamr__snapshot__free_unpacked(s, NULL);
    assert_int_equal(queue_restore(q, snap, len), 0);
    free(snap);
    assert_int_equal(queue_sts_count(q), 0);
    assert_int_equal(queue_cluster_level(q), 3);
    assert_same_digest(q, old);
    queue_free(old);
    queue_free(q);
}

/* ------------------------------------------------------------------------
 * The encoder
 * ------------------------------------------------------------------------ */

/* The entry decodes to the arguments; a NULL text is sent as "". */
static void test_sts_entry_pack(void **state)
{
    (void)state;
    static const char *const mx[] = {"mx1.example.net", NULL, "*.example.net"};
    struct queue_entry_sts_args a = {.domain = "Example.NET",
                                     .id = "id1",
                                     .mode = QUEUE_STS_TESTING,
                                     .mx = mx,
                                     .n_mx = 3,
                                     .max_age_s = 86400,
                                     .fetched_at_ms = T0 - 7};
    size_t len;
    uint8_t *b = sts_pack(&a, T0, &len);
    Hamr__Entry *e = NULL;
    assert_int_equal(proto_entry_unpack(b, len, &e), 0);
    assert_int_equal(e->timestamp_ms, T0);
    assert_int_equal(e->cmd_case, HAMR__ENTRY__CMD_STS_POLICY);
    const Hamr__StsPolicy *p = e->sts_policy;
    assert_string_equal(p->domain, "Example.NET");
    assert_string_equal(p->id, "id1");
    assert_int_equal(p->mode, HAMR__STS_POLICY__MODE__TESTING);
    assert_int_equal(p->n_mx, 3);
    assert_string_equal(p->mx[0], "mx1.example.net");
    assert_string_equal(p->mx[1], "");
    assert_string_equal(p->mx[2], "*.example.net");
    assert_int_equal(p->max_age, 86400);
    assert_int_equal(p->fetched_at_ms, T0 - 7);
    hamr__entry__free_unpacked(e, NULL);
    /* Apply refuses the empty pattern. */
    struct queue *q = sts_queue();
    assert_int_equal(fx_apply(q, b, len).status, HAMR_EINVAL);

    /* The same bytes as the entry built by hand. */
    struct queue_entry_sts_args c = pol("c.example", T0, 60);
    uint8_t *enc = sts_pack(&c, T0 + 1, &len);
    static char *hmx[] = {"mx1.example.net", "*.example.net"};
    Hamr__StsPolicy sp = HAMR__STS_POLICY__INIT;
    sp.domain = "c.example";
    sp.id = "20260101T000000";
    sp.mode = HAMR__STS_POLICY__MODE__ENFORCE;
    sp.n_mx = 2;
    sp.mx = hmx;
    sp.max_age = 60;
    sp.fetched_at_ms = T0;
    Hamr__Entry he = HAMR__ENTRY__INIT;
    he.cmd_case = HAMR__ENTRY__CMD_STS_POLICY;
    he.sts_policy = &sp;
    size_t hlen;
    uint8_t *hand = fx_pack(&he, T0 + 1, &hlen);
    assert_int_equal(len, hlen);
    assert_memory_equal(enc, hand, len);
    free(hand);
    assert_int_equal(fx_apply(q, enc, len).status, 0);
    assert_non_null(queue_sts_find(q, "c.example"));

    /* No patterns and a NULL array. */
    struct queue_entry_sts_args none = {
        .domain = "n.example", .id = "1", .max_age_s = 60, .fetched_at_ms = T0};
    b = sts_pack(&none, T0 + 2, &len);
    assert_int_equal(fx_apply(q, b, len).status, 0);
    assert_int_equal(queue_sts_find(q, "n.example")->n_mx, 0);
    queue_free(q);

    /* A failed allocation: HAMR_ENOMEM, nothing leaked (the sanitizer checks). */
    for (long n = 0; n < 2; n++) {
        uint8_t *out = NULL;
        fx_fail_after(n);
        int rv = queue_entry_sts(&c, T0, NULL, &out, &len);
        bool failed = fx_fail_off();
        if (failed) {
            assert_int_equal(rv, HAMR_ENOMEM);
        } else {
            assert_int_equal(rv, 0);
            free(out);
        }
    }
}

/* ------------------------------------------------------------------------
 * Allocation failures
 * ------------------------------------------------------------------------ */

/* Every failed allocation of an apply or a restore leaves the state as it was. */
static void test_sts_alloc_failures(void **state)
{
    (void)state;
    /* Apply: a new domain (the table grows from 16 at the 17th), and a replacement. */
    static const char *const domains[] = {"new.example", "c.example"};
    for (size_t k = 0; k < HAMR_ARRAY_LEN(domains); k++) {
        unsigned failures = 0;
        for (long n = 0;; n++) {
            assert_true(n < 100);
            struct queue *q = build_cache();
            char name[32];
            /* The first of them prunes b.example (max_age 0): 2 + 14 policies. */
            for (size_t i = 0; i < 14; i++) {
                full_name(name, sizeof(name), i);
                struct queue_entry_sts_args f = pol(name, T0, 86400);
                assert_int_equal(sts_apply(q, T0 + 4, &f).status, 0);
            }
            assert_int_equal(queue_sts_count(q), 16);
            char before[65], after[65];
            digest_of(q, before);
            size_t len;
            struct queue_entry_sts_args a = pol(domains[k], T0 + 5, 86400);
            uint8_t *b = sts_pack(&a, T0 + 5, &len);
            struct queue_apply_result r;
            fx_fail_after(n);
            int rv = queue_apply(q, b, len, &r);
            bool failed = fx_fail_off();
            free(b);
            digest_of(q, after);
            if (rv != 0) {
                assert_int_equal(rv, HAMR_ENOMEM);
                assert_string_equal(before, after);
                failures++;
            } else {
                assert_int_equal(r.status, 0);
                assert_int_equal(fetched_of(q, domains[k]), T0 + 5);
            }
            queue_free(q);
            if (rv == 0 && !failed)
                break;
        }
        assert_true(failures > 0);
    }

    /* Restore. */
    struct queue *src = build_cache();
    uint8_t *snap;
    size_t len;
    assert_int_equal(queue_snapshot(src, NULL, &snap, &len), 0);
    unsigned failures = 0;
    for (long n = 0;; n++) {
        assert_true(n < 1000);
        struct queue *dst = queue_new();
        struct fx_enq m = {.id = "OTHER", .sender = "x@example.org", .rcpts = {"y@example.com"}};
        assert_int_equal(fx_enqueue(dst, T0, &m).status, 0);
        char before[65], after[65];
        digest_of(dst, before);
        fx_fail_after(n);
        int rv = queue_restore(dst, snap, len);
        bool failed = fx_fail_off();
        digest_of(dst, after);
        if (rv != 0) {
            assert_int_equal(rv, HAMR_ENOMEM);
            assert_string_equal(before, after);
            failures++;
        } else {
            assert_same_cache(src, dst);
        }
        queue_free(dst);
        if (rv == 0 && !failed)
            break;
    }
    assert_true(failures > 0);
    free(snap);
    queue_free(src);
}

/* ------------------------------------------------------------------------
 * A random sequence against a model of the rules
 * ------------------------------------------------------------------------ */

#define MODEL_MAX 6
#define MODEL_DOMAINS 9

/* model - the rules of queue.h over a table of at most MODEL_MAX, the plain way. */
struct model_pol {
    char domain[16];
    uint64_t fetched, expires;
    uint32_t id;
};
struct model {
    struct model_pol p[MODEL_DOMAINS + 1];
    size_t n;
};

static void model_remove(struct model *m, size_t i)
{
    m->p[i] = m->p[--m->n];
}

/* model_apply - one valid policy at ts into a table of limit max. */
static void model_apply(struct model *m, size_t max, const struct model_pol *np, uint64_t ts)
{
    for (size_t i = 0; i < m->n;)
        if (m->p[i].expires < ts)
            model_remove(m, i);
        else
            i++;
    for (size_t i = 0; i < m->n; i++) {
        if (strcmp(m->p[i].domain, np->domain) != 0)
            continue;
        if (np->fetched < m->p[i].fetched)
            return;
        if (np->expires < ts)
            model_remove(m, i);
        else
            m->p[i] = *np;
        return;
    }
    if (np->expires < ts)
        return;
    if (m->n == max) {
        /* Among the held ones and the new one, the least (expires, domain) goes. */
        size_t v = 0;
        for (size_t i = 1; i < m->n; i++)
            if (m->p[i].expires < m->p[v].expires ||
                (m->p[i].expires == m->p[v].expires && strcmp(m->p[i].domain, m->p[v].domain) < 0))
                v = i;
        if (np->expires < m->p[v].expires ||
            (np->expires == m->p[v].expires && strcmp(np->domain, m->p[v].domain) < 0))
            return;
        model_remove(m, v);
    }
    m->p[m->n++] = *np;
}

/*
 * Random policies over a few domains, fetch times out of order and short
 * lifetimes, on a table filled to QUEUE_STS_MAX first so that eviction is
 * exercised: after every entry the cache equals the model's. The filler
 * policies live far longer than the model's, so they never go.
 */
static void test_sts_model(void **state)
{
    (void)state;
    static const char *const names[MODEL_DOMAINS] = {
        "a.test", "b.test", "c.test", "d.test", "e.test", "f.test", "g.test", "h.test", "i.test"};
    for (uint64_t seed = 1; seed <= 3; seed++) {
        struct queue *q = sts_queue();
        char name[32];
        size_t fill = QUEUE_STS_MAX - MODEL_MAX;
        for (size_t i = 0; i < fill; i++) {
            full_name(name, sizeof(name), i);
            struct queue_entry_sts_args f = pol(name, T0 + 1000 * DAY, 3600);
            assert_int_equal(sts_apply(q, T0, &f).status, 0);
        }
        struct model m = {.n = 0};
        uint64_t rng = seed * 0x9e3779b97f4a7c15ull, ts = T0;
        for (int step = 0; step < 3000; step++) {
            ts += fx_rng_next(&rng) % (20 * SEC);
            struct model_pol np = {0};
            const char *d = names[fx_rng_next(&rng) % MODEL_DOMAINS];
            hamr_strlcpy(np.domain, d, sizeof(np.domain));
            /* Fetched up to a minute before the entry, sometimes "in the future". */
            np.fetched = ts - 60 * SEC + fx_rng_next(&rng) % (70 * SEC);
            uint32_t max_age = (uint32_t)(fx_rng_next(&rng) % 120);
            np.expires = np.fetched + max_age * SEC;
            np.id = (uint32_t)step;
            char id[16];
            snprintf(id, sizeof(id), "s%u", np.id);
            struct queue_entry_sts_args a = pol(d, np.fetched, max_age);
            a.id = id;
            assert_int_equal(sts_apply(q, ts, &a).status, 0);
            model_apply(&m, MODEL_MAX, &np, ts);
            /* The model's domains: exactly those the model holds, with its fetch. */
            size_t held = 0;
            for (size_t k = 0; k < MODEL_DOMAINS; k++) {
                const struct queue_sts *p = queue_sts_find(q, names[k]);
                const struct model_pol *mp = NULL;
                for (size_t i = 0; i < m.n; i++)
                    if (strcmp(m.p[i].domain, names[k]) == 0)
                        mp = &m.p[i];
                if ((p == NULL) != (mp == NULL))
                    fail_msg("seed %llu step %d: %s %s", (unsigned long long)seed, step, names[k],
                             p ? "held, not in the model" : "missing");
                if (p != NULL) {
                    char want[16];
                    snprintf(want, sizeof(want), "s%u", mp->id);
                    if (strcmp(p->id, want) != 0 || p->fetched_at_ms != mp->fetched)
                        fail_msg("seed %llu step %d: %s id %s, want %s", (unsigned long long)seed,
                                 step, names[k], p->id, want);
                    held++;
                }
            }
            assert_int_equal(held, m.n);
            assert_int_equal(queue_sts_count(q), fill + m.n);
            if (step % 500 == 0) {
                struct queue *r = fx_snapshot_roundtrip(q);
                assert_same_digest(q, r);
                queue_free(r);
            }
        }
        queue_free(q);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sts_apply_find, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sts_foreach, setup, teardown),
        cmocka_unit_test(test_sts_replace),
        cmocka_unit_test_setup_teardown(test_sts_prune, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sts_evict_full, setup, teardown),
        cmocka_unit_test(test_sts_refusals),
        cmocka_unit_test(test_sts_below_level),
        cmocka_unit_test(test_sts_older_build),
        cmocka_unit_test(test_sts_snapshot_roundtrip),
        cmocka_unit_test(test_sts_digest),
        cmocka_unit_test(test_sts_restore_checks),
        cmocka_unit_test(test_sts_snapshot_older_build),
        cmocka_unit_test(test_sts_entry_pack),
        cmocka_unit_test(test_sts_alloc_failures),
        cmocka_unit_test(test_sts_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
