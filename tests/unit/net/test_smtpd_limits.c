/*
 * test_smtpd_limits.c - net/smtpd_limits (per-client counters) and the
 * connection limits of the real listener, net/smtpd_server.
 *
 * Table: one list of steps (admit or release an address at a time, advance
 * the clock, expire) with the result, the held flag, the reason, the count
 * and the number of entries expected after each: the concurrency limit,
 * the rate window and its reset, refused attempts counting toward the rate,
 * release, expiry, exempt networks, IPv4-mapped IPv6 as IPv4, limits off,
 * and the cap on entries (the oldest idle entry is evicted; a table full of
 * live entries admits uncounted). The AUTH counter in the same table: every
 * command counts, refused or not; the window and its reset (shared with the
 * connection attempts); an idle entry kept for it; exemption; off; eviction.
 *
 * Server: a libuv loop with smtpd_server on 127.0.0.1 and libuv clients in
 * the same loop. N+1 concurrent connections from one address: the first N
 * hold working sessions, the last gets the exact 421 and is closed; the
 * count falls when a session ends and a new client is served; the rate
 * limit refuses the attempt after the allowed ones until the test clock
 * passes the window, and idle entries then expire; exempt networks are not
 * limited; behind a trusted PROXY balancer the limits apply per PROXY
 * source address; at max_connections the listener stops accepting and the
 * waiting client is served once a connection ends. Stress mode: with 80 %
 * of max_sessions open the waits that start are capped at stress_timeout
 * (a session times out with 421 4.4.2 well before command_timeout), and
 * below 80 % they are not. The minimum DATA rate on the test clock: a
 * client that trickles is cut with 421 4.4.2 and nothing is submitted; a
 * client at the rate gets its message to the sink.
 *
 * Every loop runs UV_RUN_ONCE a bounded number of times under a guard timer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "net/smtpd.h"
#include "net/smtpd_limits.h"
#include "net/smtpd_server.h"
#include "tests/lib/testlib_loop.h"

/* ------------------------------------------------------------------ */
/* The table, no sockets                                               */
/* ------------------------------------------------------------------ */

enum step_op { ADMIT, RELEASE, EXPIRE, AUTH };

/* step - one operation and what must follow it. */
struct step {
    enum step_op op;
    const char *addr;
    uint64_t now_ms;
    int want_rc;         /* ADMIT, AUTH: 0 or HAMR_EBUSY */
    bool want_held;      /* ADMIT admitted: counted */
    int want_why;        /* ADMIT refused: enum smtpd_limits_why */
    unsigned want_conns; /* smtpd_limits_conns(addr) afterwards */
    size_t want_entries;
    unsigned want_auths; /* AUTH: smtpd_limits_auths(addr) afterwards */
};

/* limits_case - a labelled list of steps under one configuration. */
struct limits_case {
    const char *label;
    unsigned conn_limit, conn_rate, auth_rate;
    const char *exempt; /* a CIDR, or NULL */
    size_t max_entries;
    struct step steps[12];
    size_t n_steps;
};

#define ADMIT_OK(addr, now, conns, entries)             \
    {                                                   \
        ADMIT, addr, now, 0, true, 0, conns, entries, 0 \
    }
#define ADMIT_FREE(addr, now, entries)               \
    {                                                \
        ADMIT, addr, now, 0, false, 0, 0, entries, 0 \
    }
#define ADMIT_NO(addr, now, why, conns, entries)                    \
    {                                                               \
        ADMIT, addr, now, HAMR_EBUSY, false, why, conns, entries, 0 \
    }
#define REL(addr, now, conns, entries)                     \
    {                                                      \
        RELEASE, addr, now, 0, false, 0, conns, entries, 0 \
    }
#define EXP_AT(now, entries)                                 \
    {                                                        \
        EXPIRE, "192.0.2.1", now, 0, false, 0, 0, entries, 0 \
    }
#define AUTH_OK(addr, now, conns, auths, entries)           \
    {                                                       \
        AUTH, addr, now, 0, false, 0, conns, entries, auths \
    }
#define AUTH_NO(addr, now, conns, auths, entries)                    \
    {                                                                \
        AUTH, addr, now, HAMR_EBUSY, false, 0, conns, entries, auths \
    }
#define STEPS(...) \
    .steps = {__VA_ARGS__}, .n_steps = sizeof((struct step[]){__VA_ARGS__}) / sizeof(struct step)

static const struct limits_case limits_cases[] = {
    {.label = "count: N admitted, N+1 refused, release frees a slot",
     .conn_limit = 2,
     .max_entries = 100,
     STEPS(ADMIT_OK("192.0.2.1", 0, 1, 1),
           ADMIT_OK("192.0.2.1", 1, 2, 1),
           ADMIT_NO("192.0.2.1", 2, SMTPD_LIMITS_COUNT, 2, 1),
           ADMIT_OK("192.0.2.2", 3, 1, 2),
           REL("192.0.2.1", 4, 1, 2),
           ADMIT_OK("192.0.2.1", 5, 2, 2),
           REL("192.0.2.1", 6, 1, 2),
           REL("192.0.2.1", 7, 0, 1),
           REL("192.0.2.2", 8, 0, 0))},
    {.label = "rate: attempts per window, refused ones count, new window resets",
     .conn_rate = 2,
     .max_entries = 100,
     STEPS(ADMIT_OK("192.0.2.1", 0, 1, 1),
           REL("192.0.2.1", 1, 0, 1),
           ADMIT_OK("192.0.2.1", 2, 1, 1),
           ADMIT_NO("192.0.2.1", 3, SMTPD_LIMITS_RATE, 1, 1),
           REL("192.0.2.1", 4, 0, 1),
           ADMIT_NO("192.0.2.1", 59999, SMTPD_LIMITS_RATE, 0, 1),
           ADMIT_OK("192.0.2.1", 60000, 1, 1),
           ADMIT_OK("192.0.2.1", 60001, 2, 1),
           ADMIT_NO("192.0.2.1", 60002, SMTPD_LIMITS_RATE, 2, 1))},
    {.label = "expiry: idle entries go once their window has passed",
     .conn_rate = 10,
     .max_entries = 100,
     STEPS(ADMIT_OK("192.0.2.1", 0, 1, 1),
           ADMIT_OK("192.0.2.2", 10, 1, 2),
           REL("192.0.2.1", 20, 0, 2),
           EXP_AT(59999, 2),
           EXP_AT(60000, 1),
           REL("192.0.2.2", 60001, 0, 1),
           EXP_AT(60009, 1),
           EXP_AT(60010, 0))},
    {.label = "count only: an idle entry is freed at once",
     .conn_limit = 5,
     .max_entries = 100,
     STEPS(ADMIT_OK("2001:db8::1", 0, 1, 1), REL("2001:db8::1", 1, 0, 0))},
    {.label = "IPv4-mapped IPv6 is the IPv4 address",
     .conn_limit = 1,
     .max_entries = 100,
     STEPS(ADMIT_OK("192.0.2.7", 0, 1, 1),
           ADMIT_NO("::ffff:192.0.2.7", 1, SMTPD_LIMITS_COUNT, 1, 1),
           REL("::ffff:192.0.2.7", 2, 0, 0))},
    {.label = "exempt networks are neither limited nor counted",
     .conn_limit = 1,
     .conn_rate = 1,
     .exempt = "127.0.0.0/8",
     .max_entries = 100,
     STEPS(ADMIT_FREE("127.0.0.1", 0, 0),
           ADMIT_FREE("127.0.0.1", 1, 0),
           ADMIT_OK("192.0.2.1", 2, 1, 1),
           ADMIT_NO("192.0.2.1", 3, SMTPD_LIMITS_COUNT, 1, 1))},
    {.label = "limits off: nothing counted",
     .max_entries = 100,
     STEPS(ADMIT_FREE("192.0.2.1", 0, 0), ADMIT_FREE("192.0.2.1", 1, 0))},
    {.label = "full table: the oldest idle entry is evicted",
     .conn_rate = 5,
     .max_entries = 2,
     STEPS(ADMIT_OK("192.0.2.1", 0, 1, 1),
           REL("192.0.2.1", 1, 0, 1),
           ADMIT_OK("192.0.2.2", 2, 1, 2),
           REL("192.0.2.2", 3, 0, 2),
           ADMIT_OK("192.0.2.3", 4, 1, 2),
           ADMIT_OK("192.0.2.2", 5, 1, 2))},
    {.label = "full of live entries: admitted uncounted",
     .conn_limit = 1,
     .max_entries = 1,
     STEPS(ADMIT_OK("192.0.2.1", 0, 1, 1),
           ADMIT_FREE("192.0.2.2", 1, 1),
           ADMIT_NO("192.0.2.1", 2, SMTPD_LIMITS_COUNT, 1, 1))},
    {.label = "auth rate: every command counts, refused ones too, a new window resets",
     .auth_rate = 2,
     .max_entries = 100,
     STEPS(AUTH_OK("192.0.2.1", 0, 0, 1, 1),
           AUTH_OK("192.0.2.1", 1, 0, 2, 1),
           AUTH_NO("192.0.2.1", 2, 0, 3, 1),
           AUTH_NO("192.0.2.1", 59999, 0, 4, 1),
           AUTH_OK("192.0.2.2", 59999, 0, 1, 2),
           EXP_AT(60000, 1),
           AUTH_OK("192.0.2.1", 60000, 0, 1, 2),
           EXP_AT(119999, 1),
           EXP_AT(120000, 0))},
    {.label = "auth rate: the connection's entry and window",
     .conn_rate = 10,
     .auth_rate = 1,
     .max_entries = 100,
     STEPS(ADMIT_OK("192.0.2.1", 0, 1, 1),
           AUTH_OK("::ffff:192.0.2.1", 1, 1, 1, 1),
           AUTH_NO("192.0.2.1", 2, 1, 2, 1),
           REL("192.0.2.1", 3, 0, 1),
           ADMIT_OK("192.0.2.1", 60000, 1, 1),
           AUTH_OK("192.0.2.1", 60001, 1, 1, 1),
           AUTH_NO("192.0.2.1", 60002, 1, 2, 1))},
    {.label = "auth rate: an idle entry stays for its window",
     .conn_limit = 5,
     .auth_rate = 3,
     .max_entries = 100,
     STEPS(ADMIT_OK("2001:db8::1", 0, 1, 1),
           REL("2001:db8::1", 1, 0, 1),
           EXP_AT(59999, 1),
           EXP_AT(60000, 0))},
    {.label = "auth rate: exempt networks are neither limited nor counted",
     .auth_rate = 1,
     .exempt = "127.0.0.0/8",
     .max_entries = 100,
     STEPS(AUTH_OK("127.0.0.1", 0, 0, 0, 0),
           AUTH_OK("127.0.0.1", 1, 0, 0, 0),
           AUTH_OK("192.0.2.1", 2, 0, 1, 1),
           AUTH_NO("192.0.2.1", 3, 0, 2, 1))},
    {.label = "auth rate off: nothing counted",
     .conn_limit = 1,
     .max_entries = 100,
     STEPS(ADMIT_OK("192.0.2.1", 0, 1, 1),
           AUTH_OK("192.0.2.1", 1, 1, 0, 1),
           AUTH_OK("192.0.2.1", 2, 1, 0, 1),
           AUTH_OK("192.0.2.2", 3, 0, 0, 1))},
    {.label = "auth rate, full table: the oldest idle entry is evicted",
     .auth_rate = 1,
     .max_entries = 2,
     STEPS(AUTH_OK("192.0.2.1", 0, 0, 1, 1),
           AUTH_OK("192.0.2.2", 1, 0, 1, 2),
           AUTH_OK("192.0.2.3", 2, 0, 1, 2),
           AUTH_OK("192.0.2.1", 3, 0, 1, 2),
           AUTH_NO("192.0.2.3", 4, 0, 2, 2),
           AUTH_OK("192.0.2.2", 5, 0, 1, 2))},
    {.label = "auth rate, full of live entries: uncounted",
     .conn_limit = 1,
     .auth_rate = 1,
     .max_entries = 1,
     STEPS(ADMIT_OK("192.0.2.1", 0, 1, 1),
           AUTH_OK("192.0.2.2", 1, 0, 0, 1),
           AUTH_OK("192.0.2.2", 2, 0, 0, 1),
           AUTH_OK("192.0.2.1", 3, 1, 1, 1),
           AUTH_NO("192.0.2.1", 4, 1, 2, 1))},
};

/* test_table - run every case's steps and check each outcome. */
static void test_table(void **state)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(limits_cases); i++) {
        const struct limits_case *lc = &limits_cases[i];
        struct smtpd_limits *l;
        struct smtpd_cidr exempt;
        struct smtpd_limits_config cfg = {
            .conn_limit = lc->conn_limit, .conn_rate = lc->conn_rate, .auth_rate = lc->auth_rate};
        assert_int_equal(smtpd_limits_new(lc->max_entries, &l), 0);
        if (lc->exempt != NULL) {
            char addr[64];
            unsigned prefix;
            assert_int_equal(sscanf(lc->exempt, "%63[^/]/%u", addr, &prefix), 2);
            exempt = (struct smtpd_cidr){.family = AF_INET, .prefix = prefix};
            assert_int_equal(inet_pton(AF_INET, addr, exempt.addr), 1);
            cfg.exempt = &exempt;
            cfg.n_exempt = 1;
        }
        smtpd_limits_configure(l, &cfg);
        for (size_t j = 0; j < lc->n_steps; j++) {
            const struct step *st = &lc->steps[j];
            if (st->op == ADMIT) {
                bool held = !st->want_held;
                enum smtpd_limits_why why = (enum smtpd_limits_why) - 1;
                int rc = smtpd_limits_admit(l, st->addr, st->now_ms, &held, &why);
                if (rc != st->want_rc || held != st->want_held ||
                    (rc != 0 && (int)why != st->want_why))
                    fail_msg("%s, step %zu: rc=%d held=%d why=%d", lc->label, j, rc, held,
                             (int)why);
            } else if (st->op == RELEASE) {
                smtpd_limits_release(l, st->addr, st->now_ms);
            } else if (st->op == AUTH) {
                int rc = smtpd_limits_auth(l, st->addr, st->now_ms);
                if (rc != st->want_rc)
                    fail_msg("%s, step %zu: auth rc=%d want %d", lc->label, j, rc, st->want_rc);
                if (smtpd_limits_auths(l, st->addr) != st->want_auths)
                    fail_msg("%s, step %zu: auths=%u want %u", lc->label, j,
                             smtpd_limits_auths(l, st->addr), st->want_auths);
            } else {
                smtpd_limits_expire(l, st->now_ms);
            }
            if (st->op != EXPIRE && smtpd_limits_conns(l, st->addr) != st->want_conns)
                fail_msg("%s, step %zu: conns=%u want %u", lc->label, j,
                         smtpd_limits_conns(l, st->addr), st->want_conns);
            if (smtpd_limits_entries(l) != st->want_entries)
                fail_msg("%s, step %zu: entries=%zu want %zu", lc->label, j,
                         smtpd_limits_entries(l), st->want_entries);
        }
        l = smtpd_limits_free(l);
        assert_null(l);
    }
}

/* ------------------------------------------------------------------ */
/* Server harness: smtpd_server and libuv clients in one loop           */
/* ------------------------------------------------------------------ */

#define LOOP_TURNS_MAX 2000
#define GUARD_MS 10000
#define N_CLIENTS 6

struct client {
    uv_tcp_t tcp;
    uv_connect_t connect;
    bool used, connected, eof, closed;
    char in[4096];
    size_t in_len;
    size_t seen; /* what expect() already matched */
};

struct harness {
    uv_loop_t loop;
    struct testlib_loop run; /* the guard and the bounded waits */
    uv_timer_t pause;
    bool paused_out;
    struct smtpd_policy policy;
    struct smtpd_cidr nets[1];
    char *domains[1];
    bool allow_submit; /* else a submit fails the test */
    int submits;
    struct smtpd_server *server;
    bool server_closed;
    struct client clients[N_CLIENTS];
};

/* sink_new_id - a fixed queue id. */
static int sink_new_id(void *data, char *id, size_t idlen)
{
    hamr_strlcpy(id, "Q1", idlen);
    return 0;
}

/*
 * sink_submit - reached only where a test allows it; counted, then refused
 * (the callback never runs), so the client hears a 4xx for its message.
 */
static int sink_submit(void *data, const struct smtpd_envelope *env, smtpd_sink_cb cb, void *arg)
{
    struct harness *h = data;
    if (!h->allow_submit)
        fail_msg("unexpected submit");
    h->submits++;
    return HAMR_EIO;
}

/* run_until - turn the loop until *flag, at most LOOP_TURNS_MAX times or the guard. */
static bool run_until(struct harness *h, const bool *flag)
{
    return testlib_loop_until_flag(&h->run, flag);
}

/* cidr - "a.b.c.d/n" into a network. */
static struct smtpd_cidr cidr(const char *text)
{
    char addr[64];
    unsigned prefix;
    struct smtpd_cidr c = {.family = AF_INET};
    assert_int_equal(sscanf(text, "%63[^/]/%u", addr, &prefix), 2);
    c.prefix = prefix;
    assert_int_equal(inet_pton(AF_INET, addr, c.addr), 1);
    return c;
}

/* harness_start - loop, guard timer and a server on 127.0.0.1:0. */
static struct harness *harness_start(size_t max_sessions)
{
    struct harness *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    assert_int_equal(uv_loop_init(&h->loop), 0);
    testlib_loop_start(&h->run, &h->loop, GUARD_MS, LOOP_TURNS_MAX);
    uv_timer_init(&h->loop, &h->pause);
    h->pause.data = h;

    struct smtpd_policy *p = &h->policy;
    hamr_strlcpy(p->hostname, "mx.hamr.test", sizeof(p->hostname));
    p->message_size_limit = 1024 * 1024;
    p->recipient_limit = 100;
    p->header_size_limit = 64 * 1024;
    p->hopcount_limit = 50;
    p->max_errors = 20;
    p->command_timeout_ms = 30000;
    p->data_timeout_ms = 30000;
    h->domains[0] = "hamr.test";
    p->relay_domains = h->domains;
    p->n_relay_domains = 1;

    struct smtpd_sink sink = {.data = h, .new_id = sink_new_id, .submit = sink_submit};
    char err[256];
    assert_int_equal(smtpd_server_new(&h->loop, "127.0.0.1", 0, p, &sink, max_sessions, &h->server,
                                      err, sizeof(err)),
                     0);
    return h;
}

/* harness_limits - per-client limits; exempt is a CIDR or NULL. */
static void harness_limits(struct harness *h, unsigned limit, unsigned rate, const char *exempt)
{
    struct smtpd_limits_config cfg = {.conn_limit = limit, .conn_rate = rate};
    if (exempt != NULL) {
        h->nets[0] = cidr(exempt);
        cfg.exempt = h->nets;
        cfg.n_exempt = 1;
    }
    smtpd_server_set_limits(h->server, &cfg);
}

/* client_close_cb - the client handle is gone. */
static void client_close_cb(uv_handle_t *handle)
{
    struct client *c = handle->data;
    c->closed = true;
}

/* client_alloc_cb - reads append to the client's buffer. */
static void client_alloc_cb(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct client *c = handle->data;
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(sizeof(c->in) - 1 - c->in_len));
}

/* client_read_cb - keep what the server says; EOF or a reset ends it. */
static void client_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = stream->data;
    if (nread > 0) {
        c->in_len += (size_t)nread;
        c->in[c->in_len] = '\0';
        assert_true(c->in_len < sizeof(c->in) - 1);
    } else if (nread < 0) {
        c->eof = true;
        uv_read_stop(stream);
    }
}

/* client_connect_cb - connected: start reading. */
static void client_connect_cb(uv_connect_t *req, int status)
{
    struct client *c = req->data;
    assert_int_equal(status, 0);
    c->connected = true;
    assert_int_equal(uv_read_start((uv_stream_t *)&c->tcp, client_alloc_cb, client_read_cb), 0);
}

/* client_connect - client i to the server, TCP-connected when this returns. */
static struct client *client_connect(struct harness *h, size_t i)
{
    struct client *c = &h->clients[i];
    struct sockaddr_in sin;
    assert_false(c->used);
    c->used = true;
    uv_ip4_addr("127.0.0.1", smtpd_server_port(h->server), &sin);
    uv_tcp_init(&h->loop, &c->tcp);
    c->tcp.data = c;
    c->connect.data = c;
    assert_int_equal(
        uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&sin, client_connect_cb), 0);
    assert_true(run_until(h, &c->connected));
    return c;
}

/* client_write_cb - one write done. */
static void client_write_cb(uv_write_t *req, int status)
{
    free(req);
}

/* client_say - send a text line (copied). */
static void client_say(struct client *c, const char *line)
{
    size_t len = strlen(line);
    uv_write_t *req = malloc(sizeof(*req) + len);
    assert_non_null(req);
    char *copy = (char *)(req + 1);
    memcpy(copy, line, len);
    uv_buf_t b = uv_buf_init(copy, (unsigned)len);
    assert_int_equal(uv_write(req, (uv_stream_t *)&c->tcp, &b, 1, client_write_cb), 0);
}

/* expect - wait until the server has said want to c (after what was already matched). */
static void expect(struct harness *h, struct client *c, const char *want)
{
    for (int i = 0; i < LOOP_TURNS_MAX && !h->run.expired; i++) {
        if (strstr(c->in + c->seen, want) != NULL || c->eof)
            break;
        uv_run(&h->loop, UV_RUN_ONCE);
    }
    const char *hit = strstr(c->in + c->seen, want);
    if (hit == NULL)
        fail_msg("want \"%s\", server said \"%s\"", want, c->in + c->seen);
    const char *eol = strstr(hit, "\r\n");
    c->seen = eol ? (size_t)(eol + 2 - c->in) : c->in_len;
}

/* expect_closed - the server hangs up on c. */
static void expect_closed(struct harness *h, struct client *c)
{
    assert_true(run_until(h, &c->eof));
}

/* client_quit - QUIT, 221, the server closes; the client handle is closed too. */
static void client_quit(struct harness *h, struct client *c)
{
    client_say(c, "QUIT\r\n");
    expect(h, c, "221 ");
    expect_closed(h, c);
    uv_close((uv_handle_t *)&c->tcp, client_close_cb);
    assert_true(run_until(h, &c->closed));
}

/* pause_cb - a bounded wait is over. */
static void pause_cb(uv_timer_t *t)
{
    struct harness *h = t->data;
    h->paused_out = true;
}

/* wait_ms - run the loop for ms (a bounded wait for "nothing happens"). */
static void wait_ms(struct harness *h, uint64_t ms)
{
    h->paused_out = false;
    uv_timer_start(&h->pause, pause_cb, ms, 0);
    assert_true(run_until(h, &h->paused_out));
}

/* server_closed_cb - smtpd_server_close finished. */
static void server_closed_cb(void *arg)
{
    struct harness *h = arg;
    h->server_closed = true;
}

/* harness_stop - close clients, server and timers; the loop must have no handle left. */
static void harness_stop(struct harness *h)
{
    for (size_t i = 0; i < N_CLIENTS; i++)
        if (h->clients[i].used && !uv_is_closing((uv_handle_t *)&h->clients[i].tcp))
            uv_close((uv_handle_t *)&h->clients[i].tcp, client_close_cb);
    smtpd_server_close(h->server, server_closed_cb, h);
    assert_true(run_until(h, &h->server_closed));
    for (size_t i = 0; i < N_CLIENTS; i++)
        if (h->clients[i].used)
            assert_true(run_until(h, &h->clients[i].closed));
    testlib_loop_close(&h->run);
    uv_close((uv_handle_t *)&h->pause, NULL);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&h->loop), 0);
    assert_false(h->run.expired);
    free(h);
}

/* served - c was greeted and answers EHLO. */
static void served(struct harness *h, struct client *c)
{
    expect(h, c, "220 mx.hamr.test");
    client_say(c, "EHLO client.example\r\n");
    expect(h, c, "250 ");
}

static const char refused_local[] =
    "421 4.7.0 mx.hamr.test Error: too many connections from 127.0.0.1\r\n";

/* ------------------------------------------------------------------ */
/* Server tests                                                        */
/* ------------------------------------------------------------------ */

/*
 * test_server_count - limit 3: three sessions work, the fourth gets the
 * 421 and is closed; ending one lowers the count and a new client is served.
 */
static void test_server_count(void **state)
{
    struct harness *h = harness_start(20);
    const struct smtpd_limits *l = smtpd_server_limits(h->server);
    harness_limits(h, 3, 0, NULL);
    for (size_t i = 0; i < 3; i++)
        served(h, client_connect(h, i));
    assert_int_equal(smtpd_limits_conns(l, "127.0.0.1"), 3);
    struct client *over = client_connect(h, 3);
    expect_closed(h, over);
    assert_string_equal(over->in, refused_local);
    assert_int_equal(smtpd_limits_conns(l, "127.0.0.1"), 3);
    assert_int_equal(smtpd_server_sessions(h->server), 3);
    /* The first three still work after the refusal. */
    for (size_t i = 0; i < 3; i++) {
        client_say(&h->clients[i], "NOOP\r\n");
        expect(h, &h->clients[i], "250 ");
    }
    client_quit(h, &h->clients[0]);
    assert_int_equal(smtpd_limits_conns(l, "127.0.0.1"), 2);
    served(h, client_connect(h, 4));
    assert_int_equal(smtpd_limits_conns(l, "127.0.0.1"), 3);
    client_quit(h, &h->clients[1]);
    client_quit(h, &h->clients[2]);
    client_quit(h, &h->clients[4]);
    assert_int_equal(smtpd_limits_conns(l, "127.0.0.1"), 0);
    assert_int_equal(smtpd_limits_entries(l), 0); /* no rate limit: nothing kept */
    harness_stop(h);
}

/*
 * test_server_rate - rate 2 per minute: two connections work, the third
 * attempt is refused though none is open; after the window it works again,
 * and once idle past its window the address is forgotten.
 */
static void test_server_rate(void **state)
{
    struct harness *h = harness_start(20);
    const struct smtpd_limits *l = smtpd_server_limits(h->server);
    harness_limits(h, 0, 2, NULL);
    for (size_t i = 0; i < 2; i++) {
        struct client *c = client_connect(h, i);
        served(h, c);
        client_quit(h, c);
    }
    struct client *over = client_connect(h, 2);
    expect_closed(h, over);
    assert_string_equal(over->in, refused_local);
    assert_int_equal(smtpd_limits_entries(l), 1);
    smtpd_server_advance_clock(h->server, SMTPD_LIMITS_WINDOW_MS);
    assert_int_equal(smtpd_limits_entries(l), 0); /* expired */
    struct client *c = client_connect(h, 3);
    served(h, c);
    assert_int_equal(smtpd_limits_entries(l), 1);
    client_quit(h, c);
    assert_int_equal(smtpd_limits_entries(l), 1); /* kept for its window */
    smtpd_server_advance_clock(h->server, SMTPD_LIMITS_WINDOW_MS);
    assert_int_equal(smtpd_limits_entries(l), 0);
    harness_stop(h);
}

/* test_server_exempt - loopback is limited only unless listed as exempt. */
static void test_server_exempt(void **state)
{
    struct harness *h = harness_start(20);
    harness_limits(h, 1, 1, "127.0.0.0/8");
    for (size_t i = 0; i < 3; i++)
        served(h, client_connect(h, i));
    assert_int_equal(smtpd_limits_entries(smtpd_server_limits(h->server)), 0);
    harness_stop(h);
}

/*
 * test_server_proxy - a trusted balancer on 127.0.0.1 carries clients
 * from three addresses: the limit of one applies per PROXY source, so the
 * second connection of 198.51.100.1 is refused naming that address, while
 * 198.51.100.2 and a LOCAL health check from the balancer are served.
 */
static void test_server_proxy(void **state)
{
    struct harness *h = harness_start(20);
    struct smtpd_cidr balancer = cidr("127.0.0.1/32");
    const struct smtpd_limits *l = smtpd_server_limits(h->server);
    smtpd_server_set_proxy(h->server, true, &balancer, 1, 5000);
    harness_limits(h, 1, 0, NULL);

    struct client *a = client_connect(h, 0);
    client_say(a, "PROXY TCP4 198.51.100.1 127.0.0.1 40000 25\r\n");
    served(h, a);
    struct client *b = client_connect(h, 1);
    client_say(b, "PROXY TCP4 198.51.100.2 127.0.0.1 40001 25\r\n");
    served(h, b);
    struct client *a2 = client_connect(h, 2);
    client_say(a2, "PROXY TCP4 198.51.100.1 127.0.0.1 40002 25\r\n");
    expect_closed(h, a2);
    assert_string_equal(a2->in,
                        "421 4.7.0 mx.hamr.test Error: too many connections from 198.51.100.1\r\n");
    static const char local[] = "\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    struct client *hc = client_connect(h, 3);
    uv_write_t *req = malloc(sizeof(*req) + sizeof(local) - 1);
    assert_non_null(req);
    memcpy(req + 1, local, sizeof(local) - 1);
    uv_buf_t buf = uv_buf_init((char *)(req + 1), sizeof(local) - 1);
    assert_int_equal(uv_write(req, (uv_stream_t *)&hc->tcp, &buf, 1, client_write_cb), 0);
    expect(h, hc, "220 mx.hamr.test");
    assert_int_equal(smtpd_limits_conns(l, "198.51.100.1"), 1);
    assert_int_equal(smtpd_limits_conns(l, "198.51.100.2"), 1);
    assert_int_equal(smtpd_limits_conns(l, "127.0.0.1"), 0);
    client_quit(h, a);
    assert_int_equal(smtpd_limits_conns(l, "198.51.100.1"), 0);
    harness_stop(h);
}

/*
 * test_server_accept_pause - max_connections 1: a second client is left
 * unaccepted (no greeting, no 421) while the first holds its session, and
 * is greeted as soon as the first one leaves.
 */
static void test_server_accept_pause(void **state)
{
    struct harness *h = harness_start(1);
    smtpd_server_set_max_connections(h->server, 1);
    struct client *a = client_connect(h, 0);
    served(h, a);
    struct client *b = client_connect(h, 1); /* the kernel completes the handshake */
    wait_ms(h, 100);
    assert_int_equal(b->in_len, 0);
    assert_false(b->eof);
    assert_int_equal(smtpd_server_sessions(h->server), 1);
    client_quit(h, a);
    served(h, b);
    assert_int_equal(smtpd_server_sessions(h->server), 1);
    harness_stop(h);
}

/* test_server_pause_close - closing the server while a client waits unaccepted. */
static void test_server_pause_close(void **state)
{
    struct harness *h = harness_start(1);
    smtpd_server_set_max_connections(h->server, 1);
    served(h, client_connect(h, 0));
    struct client *b = client_connect(h, 1);
    wait_ms(h, 50);
    assert_int_equal(b->in_len, 0);
    harness_stop(h);
}

/* elapsed_since - loop ms since start (the loop's clock, brought up to date). */
static uint64_t elapsed_since(struct harness *h, uint64_t start)
{
    uv_update_time(&h->loop);
    return uv_now(&h->loop) - start;
}

/* now_ms - the loop's clock, brought up to date. */
static uint64_t now_ms(struct harness *h)
{
    uv_update_time(&h->loop);
    return uv_now(&h->loop);
}

/* wait_sessions - turn the loop until the server counts n sessions. */
static void wait_sessions(struct harness *h, size_t n)
{
    for (int i = 0; i < LOOP_TURNS_MAX && !h->run.expired && smtpd_server_sessions(h->server) != n;
         i++)
        uv_run(&h->loop, UV_RUN_ONCE);
    assert_int_equal(smtpd_server_sessions(h->server), n);
}

static const char timed_out[] = "421 4.4.2 mx.hamr.test Error: timeout exceeded\r\n";

/*
 * test_server_stress - max_sessions 5, command_timeout 2 s,
 * stress_timeout 60 ms. With 4 sessions (80 %) open the waits that start
 * are capped: the fourth client's and the first client's after a NOOP end
 * in 421 4.4.2 long before 2 s, while the second and third keep the waits
 * they started before. Back at 2 sessions a new wait is the full 2 s again.
 */
static void test_server_stress(void **state)
{
    struct harness *h = harness_start(5);
    h->policy.command_timeout_ms = 2000;
    h->policy.stress_timeout_ms = 60;
    for (size_t i = 0; i < 3; i++)
        served(h, client_connect(h, i));
    struct client *fourth = client_connect(h, 3); /* 4 of 5: stress begins */
    uint64_t start = now_ms(h);
    client_say(&h->clients[0], "NOOP\r\n");
    expect(h, &h->clients[0], "250 ");
    expect(h, &h->clients[0], timed_out);
    expect(h, fourth, "220 mx.hamr.test");
    expect(h, fourth, timed_out);
    assert_true(elapsed_since(h, start) < 1500);
    expect_closed(h, &h->clients[0]);
    expect_closed(h, fourth);
    /* Waits that began before the stress keep their deadline. */
    for (size_t i = 1; i < 3; i++)
        assert_null(strstr(h->clients[i].in, "421"));
    wait_sessions(h, 2); /* below 80 %: stress ends */

    start = now_ms(h);
    client_say(&h->clients[1], "NOOP\r\n");
    expect(h, &h->clients[1], "250 ");
    expect(h, &h->clients[1], timed_out);
    assert_true(elapsed_since(h, start) >= 2000);
    harness_stop(h);
}

/* data_phase - EHLO, MAIL, RCPT and DATA from c, up to the 354; small writes go out at once. */
static void data_phase(struct harness *h, struct client *c)
{
    assert_int_equal(uv_tcp_nodelay(&c->tcp, 1), 0); /* no Nagle wait for the delayed ACK */
    served(h, c);
    client_say(c, "MAIL FROM:<a@example.org>\r\n");
    expect(h, c, "250 ");
    client_say(c, "RCPT TO:<b@hamr.test>\r\n");
    expect(h, c, "250 ");
    client_say(c, "DATA\r\n");
    expect(h, c, "354 ");
}

/*
 * say_wait - send text on c and let the server read it before the test
 * clock moves: with TCP_NODELAY the octets are in the server's socket once
 * uv_write returns, and the loop polls for a fresh 20 ms (the loop's clock
 * updated first, so the pause timer cannot fire before that poll).
 */
static void say_wait(struct harness *h, struct client *c, const char *text)
{
    client_say(c, text);
    uv_update_time(&h->loop);
    wait_ms(h, 20);
}

/*
 * test_server_min_data_rate - min_data_rate 100 B/s, data_timeout 10 s on
 * the test clock (smtpd_server_advance_clock). A client sending one octet
 * every 4 s (each read in time) is cut with 421 4.4.2 once past 354 + 10 s
 * + its earned time, and nothing is submitted. A client sending 1000
 * octets every 10 s (the rate) for 50 s is not cut: its message reaches
 * the sink.
 */
static void test_server_min_data_rate(void **state)
{
    struct harness *h = harness_start(20);
    h->policy.min_data_rate = 100;
    h->policy.data_timeout_ms = 10000;
    struct client *slow = client_connect(h, 0);
    data_phase(h, slow);
    say_wait(h, slow, "a");
    smtpd_server_advance_clock(h->server, 4000);
    say_wait(h, slow, "b");
    smtpd_server_advance_clock(h->server, 4000);
    say_wait(h, slow, "c");
    assert_false(slow->eof);
    smtpd_server_advance_clock(h->server, 4000); /* 12 s > 10 s + 30 ms */
    client_say(slow, "d\r\n.\r\n");
    expect(h, slow, timed_out);
    expect_closed(h, slow);
    assert_int_equal(h->submits, 0);

    char chunk[1001];
    for (size_t i = 0; i < 1000; i += 100) {
        memset(chunk + i, 'x', 98);
        chunk[i + 98] = '\r';
        chunk[i + 99] = '\n';
    }
    chunk[1000] = '\0';
    h->allow_submit = true;
    struct client *steady = client_connect(h, 1);
    data_phase(h, steady);
    for (int k = 0; k < 5; k++) {
        say_wait(h, steady, chunk);
        smtpd_server_advance_clock(h->server, 10000);
    }
    assert_false(steady->eof);
    client_say(steady, ".\r\n");
    expect(h, steady, "451 ");
    assert_int_equal(h->submits, 1);
    client_quit(h, steady);
    harness_stop(h);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* a client cut off mid-write gets EPIPE, not death */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_server_count),
        cmocka_unit_test(test_server_rate),
        cmocka_unit_test(test_server_exempt),
        cmocka_unit_test(test_server_proxy),
        cmocka_unit_test(test_server_accept_pause),
        cmocka_unit_test(test_server_pause_close),
        cmocka_unit_test(test_server_stress),
        cmocka_unit_test(test_server_min_data_rate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
