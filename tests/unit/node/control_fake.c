/*
 * control_fake.c - a stand-in hamrd control port for the hamrctl tests.
 *
 *   control_fake [--host IP] [--socket PATH] [--tls CA CERT KEY] [--leader ADDR]
 *                [--now SECONDS] [--old]
 *
 * Listens on --host (127.0.0.1 by default; a free port), and on the Unix
 * socket PATH if given; with --tls the TCP port takes mutual TLS on that
 * cluster PKI (operators only, as hamrd's). Prints "PORT\n" on stdout, and
 * answers with canned data: "status" a three-node status (its cluster TLS
 * part: what hamrd says of the --tls files, pki_status_fill, at Unix time
 * --now or else the clock; plaintext without --tls; left out with --old, as
 * a node older than the field), "queue" two messages (paged as hamrd does:
 * "--limit 1" gives one and next_after, "--after Q1AAAA" starts at the
 * second; other arguments are ignored), "show ID" one
 * message, any verb whose first argument is "MISSING" the error
 * HAMR_ENOTFOUND, "transfer" with --leader the error HAMR_ENOTLEADER naming
 * ADDR, any other verb "VERB ok ARGS via PORT" (its TCP port, so that a
 * test sees which fake answered). Exits after 30 s or when stdin reaches end
 * of file, whichever comes first.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "util/common.h"
#include "util/err.h"

#include "net/cluster_tls.h"
#include "node/control.h"
#include "node/pki_status.h"

#define CONTROL_FAKE_LIFETIME_MS 30000

static struct control *control_fake_ctl;
static uv_timer_t control_fake_timer;
static uv_pipe_t control_fake_stdin;
static const char *control_fake_leader;      /* --leader */
static struct cluster_tls *control_fake_tls; /* --tls, else NULL */
static time_t control_fake_now;              /* --now, else 0: the clock */
static bool control_fake_old;                /* --old */

/* control_fake_status - the answer to "status". */
static void control_fake_status(struct control_call *call)
{
    Hamr__MemberStatus m[3];
    Hamr__MemberStatus *mp[3];
    static const char *const addrs[] = {"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"};
    static const char *const zones[] = {"dc1", "dc1", "dc2"};
    for (int i = 0; i < 3; i++) {
        hamr__member_status__init(&m[i]);
        m[i].id = (uint64_t)i + 1;
        m[i].address = (char *)addrs[i];
        m[i].role = "voter";
        m[i].zone = (char *)zones[i];
        mp[i] = &m[i];
    }
    Hamr__NodeStatus st = HAMR__NODE_STATUS__INIT;
    st.id = 1;
    st.state = "leader";
    st.leader_id = 1;
    st.leader_address = "127.0.0.1:7001";
    st.zone = "dc1";
    st.term = 7;
    st.commit_index = 120;
    st.applied_index = 119;
    st.last_index = 121;
    st.members = mp;
    st.n_members = 3;
    st.queue_messages = 2;
    st.queue_rcpts_pending = 3;
    st.queue_bytes = 4096;
    st.queue_digest = "9f86d081";
    st.free_bytes = 10ull << 30;
    st.version = "0.1.0";
    Hamr__ClusterTlsStatus tls;
    char ident[PKI_STATUS_IDENT_MAX];
    pki_status_fill(control_fake_tls, control_fake_now != 0 ? control_fake_now : time(NULL), &tls,
                    ident, sizeof(ident));
    if (!control_fake_old)
        st.cluster_tls = &tls;
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.status = &st;
    control_reply(call, &resp);
}

/* control_fake_entries - n entries from first: the answer to "queue" and "show". */
static void control_fake_entries(struct control_call *call, size_t first, size_t n)
{
    Hamr__QueueRcpt r1 = HAMR__QUEUE_RCPT__INIT, r2 = HAMR__QUEUE_RCPT__INIT;
    r1.addr = "bob@example.org";
    r1.state = "deferred";
    r1.attempts = 2;
    r1.next_attempt_ms = 1700000600000ull;
    r1.last_error = "451 4.7.1 greylisted \x1b[31m";
    r1.tls_policy = "verify";
    r1.tls = "TLSv1.3 TLS_AES_256_GCM_SHA384 (verified)\x1b[0m";
    r2.addr = "carol@example.net";
    r2.state = "pending";
    Hamr__QueueRcpt *rcpts[] = {&r1, &r2};
    Hamr__QueueEntry e[2];
    Hamr__QueueEntry *ep[2];
    for (size_t i = 0; i < 2; i++) {
        hamr__queue_entry__init(&e[i]);
        ep[i] = &e[i];
    }
    e[0].queue_id = "Q1AAAA";
    e[0].sender = "alice@example.com";
    e[0].size = 2048;
    e[0].received_at_ms = 1700000000000ull;
    e[0].rcpts = rcpts;
    e[0].n_rcpts = 2;
    e[0].client_addr = "192.0.2.10";
    e[0].helo = "client.example.com";
    e[0].headers = "Received: from client.example.com\r\nSubject: hello\r\n";
    e[1].queue_id = "Q2BBBB";
    e[1].sender = "";
    e[1].size = 1000;
    e[1].held = 1;
    e[1].received_at_ms = 1700000100000ull;
    e[1].rcpts = rcpts + 1;
    e[1].n_rcpts = 1;
    Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
    resp.entries = ep + first;
    resp.n_entries = n;
    if (first + n < 2)
        resp.next_after = e[first + n - 1].queue_id;
    control_reply(call, &resp);
}

/* control_fake_queue - "queue [--limit N] [--after Q1AAAA]" over the two canned entries. */
static void control_fake_queue(struct control_call *call, const Hamr__ControlRequest *req)
{
    size_t first = 0, n = 2;
    for (size_t i = 0; i + 1 < req->n_args; i += 2) {
        if (strcmp(req->args[i], "--after") == 0 && strcmp(req->args[i + 1], "Q1AAAA") == 0)
            first = 1;
        else if (strcmp(req->args[i], "--limit") == 0 && strcmp(req->args[i + 1], "1") == 0)
            n = 1;
    }
    control_fake_entries(call, first, n < 2 - first ? n : 2 - first);
}

/* control_fake_handle - canned answers, always at once. */
static void control_fake_handle(void *data,
                                struct control_call *call,
                                const Hamr__ControlRequest *req)
{
    if (req->n_args > 0 && strcmp(req->args[0], "MISSING") == 0) {
        control_reply_error(call, HAMR_ENOTFOUND, "no such message: %s", req->args[0]);
    } else if (control_fake_leader != NULL && strcmp(req->verb, "transfer") == 0) {
        Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
        resp.code = HAMR_ENOTLEADER;
        resp.error = "transfer: node 2 is the leader";
        resp.leader_control = (char *)control_fake_leader;
        control_reply(call, &resp);
    } else if (strcmp(req->verb, "status") == 0) {
        control_fake_status(call);
    } else if (strcmp(req->verb, "queue") == 0) {
        control_fake_queue(call, req);
    } else if (strcmp(req->verb, "show") == 0) {
        control_fake_entries(call, 0, 1);
    } else {
        char msg[512];
        size_t n = (size_t)snprintf(msg, sizeof(msg), "%s ok", req->verb);
        for (size_t i = 0; i < req->n_args && n < sizeof(msg); i++)
            n += (size_t)snprintf(msg + n, sizeof(msg) - n, " %s", req->args[i]);
        if (n < sizeof(msg))
            snprintf(msg + n, sizeof(msg) - n, " via %u", (unsigned)control_port(control_fake_ctl));
        Hamr__ControlResponse resp = HAMR__CONTROL_RESPONSE__INIT;
        resp.message = msg;
        control_reply(call, &resp);
    }
}

/* control_fake_stop - close everything; the loop then ends. */
static void control_fake_stop(void)
{
    if (!uv_is_closing((uv_handle_t *)&control_fake_timer)) {
        uv_close((uv_handle_t *)&control_fake_timer, NULL);
        uv_close((uv_handle_t *)&control_fake_stdin, NULL);
        control_close(control_fake_ctl, NULL, NULL);
    }
}

/* control_fake_timer_cb - the lifetime is over. */
static void control_fake_timer_cb(uv_timer_t *t)
{
    control_fake_stop();
}

/* control_fake_alloc_cb - stdin input is read and dropped. */
static void control_fake_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    static char buf[256];
    *b = uv_buf_init(buf, sizeof(buf));
}

/* control_fake_stdin_cb - end of stdin (or an error) stops the fake. */
static void control_fake_stdin_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    if (nread < 0)
        control_fake_stop();
}

/* main - listen, print the port, serve until stopped. */
int main(int argc, char **argv)
{
    uv_loop_t *loop = uv_default_loop();
    struct control_config cfg = {.host = "127.0.0.1"};
    struct cluster_tls_files files = {0};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) {
            cfg.host = argv[++i];
        } else if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
            cfg.socket_path = argv[++i];
        } else if (strcmp(argv[i], "--leader") == 0 && i + 1 < argc) {
            control_fake_leader = argv[++i];
        } else if (strcmp(argv[i], "--now") == 0 && i + 1 < argc) {
            control_fake_now = (time_t)strtoll(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--old") == 0) {
            control_fake_old = true;
        } else if (strcmp(argv[i], "--tls") == 0 && i + 3 < argc) {
            files.ca = argv[++i];
            files.cert = argv[++i];
            files.key = argv[++i];
        } else {
            fprintf(stderr, "control_fake: bad argument \"%s\"\n", argv[i]);
            return 2;
        }
    }
    char err[1024];
    struct cluster_tls *ct = NULL;
    if (files.ca != NULL && cluster_tls_new(&files, &ct, err, sizeof(err)) != 0) {
        fprintf(stderr, "control_fake: %s\n", err);
        return 1;
    }
    cfg.tls = ct;
    control_fake_tls = ct;
    struct control_handler h = {.data = NULL, .handle = control_fake_handle};
    if (control_new(loop, &cfg, &h, &control_fake_ctl, err, sizeof(err)) != 0) {
        fprintf(stderr, "control_fake: %s\n", err);
        cluster_tls_free(ct);
        return 1;
    }
    printf("%u\n", (unsigned)control_port(control_fake_ctl));
    fflush(stdout);
    uv_timer_init(loop, &control_fake_timer);
    uv_timer_start(&control_fake_timer, control_fake_timer_cb, CONTROL_FAKE_LIFETIME_MS, 0);
    uv_pipe_init(loop, &control_fake_stdin, 0);
    if (uv_pipe_open(&control_fake_stdin, 0) != 0 ||
        uv_read_start((uv_stream_t *)&control_fake_stdin, control_fake_alloc_cb,
                      control_fake_stdin_cb) != 0)
        fprintf(stderr, "control_fake: stdin not watched; exiting after the timeout\n");
    uv_run(loop, UV_RUN_DEFAULT);
    cluster_tls_free(ct);
    return uv_loop_close(loop) == 0 ? 0 : 1;
}
