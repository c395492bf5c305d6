/*
 * fuzz_smtpd_auth.c - libFuzzer target for SMTP AUTH (RFC 4954: PLAIN and
 * LOGIN) in net/smtpd_session with the credentials table and the strict
 * base64 decoder of net/smtpd_auth. AUTH is offered only inside TLS, so
 * fuzz_smtpd_session never gets here: this target's fake transport accepts
 * STARTTLS at once (later input passes through as if decrypted), the
 * client says EHLO again inside TLS (unless byte 0 says not to), and then
 * the fuzzer is the client.
 * Passwords are checked synchronously (no io.auth_check) against a real
 * table loaded once from a temporary file with cheap hashes (1000
 * iterations, the file's minimum).
 *
 * Input:
 *   byte 0  bits 0-1 how input is cut into reads (one read, per line, per
 *           octet, pseudo-random); bit 2 no EHLO inside TLS (the input
 *           starts right after STARTTLS); bit 3 io.auth_rate refuses every
 *           third AUTH; bits 4-5 auth_max_failures (0 = the default 3, 1,
 *           2, 5); bits 6-7 what happens at the end (nothing, timeout,
 *           shutdown, shutdown before the last read).
 *   rest    what the client sends inside TLS: AUTH commands, responses to
 *           334, "*", over-long lines, NULs, bad base64, mail.
 *
 * Properties checked:
 *   - AUTH is offered in the EHLO reply inside TLS and not before;
 *   - every write is whole reply lines: CRLF-terminated, "[2-5]dd" then ' '
 *     or '-', printable ASCII, at most 512 octets; nothing after close;
 *   - a 334 is one of the three prompts ("334 ", Username:, Password:);
 *   - 235 at most once per session, and only if the client's octets hold a
 *     user's password in base64 (at one of the three alignments a password
 *     can have inside a PLAIN or LOGIN response): no way in without it;
 *   - at most auth_max_failures 535 replies; "421 4.7.0 ... too many failed
 *     authentications" only right at the limit, and the session closes then;
 *   - the synchronous path never leaves a check pending;
 *   - an envelope with a recipient outside our relay domains comes only
 *     after 235, and its Received: says "with ESMTPSA" exactly when the
 *     client authenticated ("ESMTPS" otherwise: always inside TLS; plain
 *     "SMTP" after HELO; "UTF8SMTPSA" and "UTF8SMTPS" for a message sent
 *     with SMTPUTF8, RFC 6531 4.3).
 *
 * Security note: the input is arbitrary bytes, as from a hostile client
 * that completed a TLS handshake.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "util/common.h"
#include "util/err.h"
#include "net/smtpd.h"
#include "net/smtpd_auth.h"
#include "net/smtpd_session.h"
#include "fuzz_common.h"
#include "fuzz_session_io.h"

#define FUZZ_AUTH_HOST "mx.hamr.test"
#define FUZZ_AUTH_CLIENT "192.0.2.1"
#define FUZZ_AUTH_ITER 1000 /* SMTPD_AUTH_ITERATIONS_MIN: cheap checks */

/* The table's users; passwords long enough that base64 pins them down. */
static const struct {
    const char *user, *pass;
} fuzz_auth_users[] = {
    {"alice", "secret-alice"},
    {"bob@hamr.test", "b0b-passw0rd"},
};

/* fuzz_auth_frag - the base64 of a password at the three alignments a response can give it. */
static char fuzz_auth_frag[HAMR_ARRAY_LEN(fuzz_auth_users)][3][32];

static struct smtpd_auth *fuzz_auth_table;

/* fuzz_auth_state - beside the transport: the auth_rate limiter and the reply counters. */
struct fuzz_auth_state {
    unsigned rate_calls;
    bool rate_refuse;
    unsigned r235, r535, r421_auth;
    bool offered; /* the EHLO inside TLS offered AUTH */
};

/* fuzz_auth_sink - the fake sink: holds at most one submit. */
struct fuzz_auth_sink {
    unsigned ids, submits;
    const struct fuzz_auth_state *state;
    smtpd_sink_cb cb;
    void *cb_arg;
};

/* fuzz_auth_check_line - one reply line l[0..n) (no CRLF): what AUTH may say (on_line). */
static void fuzz_auth_check_line(void *owner, const char *l, size_t n)
{
    struct fuzz_auth_state *r = owner;
    if (memcmp(l, "334", 3) == 0) {
        FUZZ_CHECK((n == 4 && l[3] == ' ') ||
                   (n == 16 && (memcmp(l, "334 VXNlcm5hbWU6", 16) == 0 ||
                                memcmp(l, "334 UGFzc3dvcmQ6", 16) == 0)));
    } else if (memcmp(l, "235", 3) == 0) {
        r->r235++;
    } else if (memcmp(l, "535", 3) == 0) {
        r->r535++;
    } else if (memcmp(l, "421", 3) == 0 && memmem(l, n, "failed authentications", 22) != NULL) {
        r->r421_auth++;
    } else if (n >= 8 && memcmp(l, "250", 3) == 0 && memcmp(l + 4, "AUTH", 4) == 0) {
        r->offered = true;
    }
}

/* fuzz_auth_rate - every third AUTH over the rate when asked. */
static int fuzz_auth_rate(void *data)
{
    struct testlib_session_io *io = data;
    struct fuzz_auth_state *r = io->owner;
    FUZZ_CHECK(!io->released && io->starttls == 1);
    r->rate_calls++;
    return r->rate_refuse && r->rate_calls % 3 == 0 ? HAMR_EBUSY : 0;
}

/* fuzz_auth_new_id - HAMRQ0001, HAMRQ0002, ... */
static int fuzz_auth_new_id(void *data, char *id, size_t idlen)
{
    struct fuzz_auth_sink *k = data;
    snprintf(id, idlen, "HAMRQ%04u", ++k->ids);
    return 0;
}

/* fuzz_auth_relay_domain - rcpt's domain is hamr.test (the one relay domain). */
static bool fuzz_auth_relay_domain(const char *rcpt)
{
    const char *at = strrchr(rcpt, '@');
    return at != NULL && strcasecmp(at + 1, "hamr.test") == 0;
}

/* fuzz_auth_submit - relay only after 235; Received: names the protocol; hold the callback. */
static int fuzz_auth_submit(void *data,
                            const struct smtpd_envelope *env,
                            smtpd_sink_cb cb,
                            void *arg)
{
    struct fuzz_auth_sink *k = data;
    bool authed = k->state->r235 > 0;
    FUZZ_CHECK(k->cb == NULL);
    k->submits++;
    for (size_t i = 0; i < env->n_rcpts; i++)
        FUZZ_CHECK(authed || fuzz_auth_relay_domain(env->rcpts[i]));
    /*
     * Our Received: says how the client came. Its first line ends at the
     * first CRLF (the helo in it is printable); the second names us and
     * the protocol. HELO makes it plain SMTP.
     */
    static const char by[] = "\r\n\tby " FUZZ_AUTH_HOST " (hamr) with ";
    const uint8_t *eol = memmem(env->body, env->body_len, "\r\n", 2);
    FUZZ_CHECK(eol != NULL);
    size_t off = (size_t)(eol - env->body), left = env->body_len - off;
    FUZZ_CHECK(left > sizeof(by) - 1 && memcmp(eol, by, sizeof(by) - 1) == 0);
    const char *with = (const char *)eol + sizeof(by) - 1;
    left -= sizeof(by) - 1;
    /* RFC 6531 4.3: a message sent with SMTPUTF8 says UTF8SMTPS[A]. */
    const char *want = env->smtputf8 ? (authed ? "UTF8SMTPSA id " : "UTF8SMTPS id ")
                                     : (authed ? "ESMTPSA id " : "ESMTPS id ");
    FUZZ_CHECK((left > strlen(want) && memcmp(with, want, strlen(want)) == 0) ||
               (left > 8 && memcmp(with, "SMTP id ", 8) == 0));
    k->cb = cb;
    k->cb_arg = arg;
    return 0;
}

/* fuzz_auth_step - answer the held submit (committed). */
static void fuzz_auth_step(struct fuzz_auth_sink *k)
{
    smtpd_sink_cb cb = k->cb;
    k->cb = NULL;
    cb(k->cb_arg, 0);
}

/* fuzz_auth_has_password - the client's octets hold some user's password in base64. */
static bool fuzz_auth_has_password(const uint8_t *p, size_t n)
{
    for (size_t u = 0; u < HAMR_ARRAY_LEN(fuzz_auth_users); u++)
        for (size_t a = 0; a < 3; a++)
            if (memmem(p, n, fuzz_auth_frag[u][a], strlen(fuzz_auth_frag[u][a])) != NULL)
                return true;
    return false;
}

/* fuzz_auth_die - set-up failed: say why and stop (not a finding). */
static void fuzz_auth_die(const char *what)
{
    fprintf(stderr, "fuzz_smtpd_auth: %s\n", what);
    exit(1);
}

/*
 * LLVMFuzzerInitialize - the credentials table, once: written to a
 * temporary file, loaded, the file removed. The password fragments.
 */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char path[] = "/tmp/hamr-fuzz-auth-XXXXXX", line[512], err[512];
    fuzz_log_setup();
    int fd = mkstemp(path);
    if (fd < 0)
        fuzz_auth_die("mkstemp");
    FILE *f = fdopen(fd, "w");
    if (f == NULL)
        fuzz_auth_die("fdopen");
    fprintf(f, "# hamr fuzz credentials\n\n");
    for (size_t u = 0; u < HAMR_ARRAY_LEN(fuzz_auth_users); u++) {
        const char *pass = fuzz_auth_users[u].pass;
        if (smtpd_auth_hash_line(fuzz_auth_users[u].user, pass, strlen(pass), FUZZ_AUTH_ITER, line,
                                 sizeof(line)) != 0)
            fuzz_auth_die("hash_line");
        fprintf(f, "%s\n", line);
        /* Alignment a: the password starts a bytes into a 3-octet group. */
        size_t len = strlen(pass);
        for (size_t a = 0; a < 3; a++) {
            size_t skip = (3 - a) % 3, whole = (len - skip) / 3 * 3;
            if (smtpd_auth_b64_encode((const uint8_t *)pass + skip, whole, fuzz_auth_frag[u][a],
                                      sizeof(fuzz_auth_frag[u][a])) != 0)
                fuzz_auth_die("b64_encode");
        }
    }
    if (fclose(f) != 0)
        fuzz_auth_die("write credentials");
    int rc = smtpd_auth_new(path, &fuzz_auth_table, err, sizeof(err));
    unlink(path);
    if (rc != 0)
        fuzz_auth_die(err);
    return 0;
}

/* fuzz_auth_send - a fixed piece of the client's side. */
static void fuzz_auth_send(struct smtpd_session *s, const char *text)
{
    smtpd_session_input(s, text, strlen(text));
}

/* LLVMFuzzerTestOneInput - one session: EHLO, STARTTLS, [EHLO], then the client's bytes. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned max_failures[4] = {0, 1, 2, 5};
    struct fuzz_in in = {data, size};
    uint8_t b0 = fuzz_u8(&in);
    bool no_ehlo = (b0 & 4) != 0;
    struct fuzz_auth_state state = {.rate_refuse = (b0 & 8) != 0};
    struct testlib_session_io io;
    struct fuzz_auth_sink k = {.state = &state};
    char *domains[1] = {"hamr.test"};
    struct smtpd_policy policy = {
        .relay_domains = domains,
        .n_relay_domains = 1,
        .message_size_limit = 64 * 1024,
        .recipient_limit = 10,
        .header_size_limit = 16 * 1024,
        .hopcount_limit = 20,
        .max_errors = 20,
        .command_timeout_ms = 300000,
        .data_timeout_ms = 300000,
        .auth = fuzz_auth_table,
        .auth_max_failures = max_failures[(b0 >> 4) & 3],
    };
    unsigned limit = policy.auth_max_failures ? policy.auth_max_failures : 3;
    hamr_strlcpy(policy.hostname, FUZZ_AUTH_HOST, sizeof(policy.hostname));
    FUZZ_CHECK(testlib_session_io_init(&io, false) == 0);
    io.on_line = fuzz_auth_check_line;
    io.owner = &state;
    struct smtpd_session_io ops = testlib_session_io_ops(&io);
    ops.starttls = testlib_session_io_starttls;
    ops.auth_rate = fuzz_auth_rate;
    const struct smtpd_sink sink = {
        .data = &k,
        .new_id = fuzz_auth_new_id,
        .submit = fuzz_auth_submit,
    };
    struct smtpd_session *s = NULL;
    FUZZ_CHECK(smtpd_session_new(&policy, &sink, &ops, FUZZ_AUTH_CLIENT, &s) == 0);

    /* Into TLS: AUTH is not offered before it. */
    smtpd_session_greet(s);
    fuzz_auth_send(s, "EHLO client.example\r\n");
    FUZZ_CHECK(!state.offered);
    fuzz_auth_send(s, "STARTTLS\r\n");
    FUZZ_CHECK(io.starttls == 1 && smtpd_session_tls(s));
    if (!no_ehlo) {
        fuzz_auth_send(s, "EHLO client.example\r\n");
        FUZZ_CHECK(state.offered && smtpd_session_state(s) == SMTPD_STATE_READY);
    }

    struct fuzz_session_io_feed feed = {
        .p = in.p, .left = in.n, .cut = b0 & 3, .ending = (b0 >> 6) & 3, .lcg = b0};
    while (feed.left > 0 && io.closes == 0) {
        fuzz_session_io_feed_read(&feed, s);
        if (k.cb != NULL)
            fuzz_auth_step(&k);
        enum smtpd_state st = smtpd_session_state(s);
        FUZZ_CHECK(st >= SMTPD_STATE_CONNECTED && st < SMTPD_STATE_COUNT);
        FUZZ_CHECK(!smtpd_session_auth_pending(s));
        FUZZ_CHECK(state.r235 <= 1);
        FUZZ_CHECK(state.r535 <= limit);
        FUZZ_CHECK(state.r421_auth == 0 ||
                   (state.r421_auth == 1 && state.r535 == limit && io.closes == 1));
    }
    fuzz_session_io_feed_end(&feed, s);
    if (k.cb != NULL)
        fuzz_auth_step(&k);
    FUZZ_CHECK(state.r235 <= 1 && state.r535 <= limit);
    /* No way in without a password. */
    FUZZ_CHECK(state.r235 == 0 || fuzz_auth_has_password(in.p, in.n));

    io.released = true;
    s = smtpd_session_free(s);
    FUZZ_CHECK(k.cb == NULL);
    testlib_session_io_free(&io);
    return 0;
}
