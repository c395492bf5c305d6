/*
 * fuzz_smtpd_session.c - libFuzzer target for a whole inbound SMTP session
 * (net/smtpd_session with its reader, address parser and reply table),
 * driven with a fake transport (fuzz_session_io.h) and a fake sink as the
 * unit tests do.
 *
 * Input:
 *   byte 0  bits 0-1 client address (outside, relay network, IPv6 outside,
 *           v4-mapped relay network); bits 2-3 policy limits (defaults, tiny,
 *           small, one recipient); bits 4-5 sink behaviour (commit, fail in
 *           the callback, fail in submit, hold until the client has gone);
 *           bit 6 check_mail says "no space" on every other MAIL; bit 7 the
 *           transport reports a backlog over the high-water mark.
 *   byte 1  bits 0-1 how input is cut into reads (one read, per line, per
 *           octet, pseudo-random); bits 2-3 what happens at the end (nothing,
 *           timeout, shutdown, shutdown before the last read); bit 4 the
 *           client talks before the greeting; bit 5 the sink's ext_ok says
 *           no (SMTPUTF8, DSN and REQUIRETLS not offered); bit 6 the
 *           transport does STARTTLS (at once, as the unit tests' fake).
 *   rest    what the client sends.
 *
 * Properties checked:
 *   - every write is whole reply lines: CRLF-terminated, "[2-5]dd" then ' '
 *     or '-', printable ASCII only (client text never breaks a reply);
 *   - nothing is written after close; no transport call after the owner let
 *     go; pause and resume alternate;
 *   - a submitted envelope is clean: printable sender, helo and recipients
 *     of bounded length (with SMTPUTF8, well-formed UTF-8 without controls
 *     in the addresses), 1..recipient_limit recipients, our queue id, a body
 *     that starts with our Received:, has CRLF line ends only, no NUL, ends
 *     in CRLF and is within message_size_limit (SECURITY.md S1-S3, S7, S8);
 *   - its extensions are sane (SECURITY.md S11, S24): none while ext_ok
 *     says no; REQUIRETLS only inside TLS; RET a known value; ENVID 1-100
 *     printable ASCII; rcpt_dsn NULL or one entry per recipient, some of
 *     them set, NOTIFY bits NEVER alone or of SUCCESS, FAILURE and DELAY,
 *     ORCPT "type;address" within 500 octets, well-formed UTF-8 without
 *     controls;
 *   - a client outside relay_networks gets only recipients in our relay
 *     domains, with a domain (not a literal) and no %, ! or quoted @
 *     (SECURITY.md S12);
 *   - the envelope stays intact until the sink calls back; "250 ... queued
 *     as" is sent once per successful callback and never otherwise; submits
 *     never outnumber the queue ids handed out (one per 354 or first BDAT
 *     chunk, RFC 3030).
 *
 * Security note: the input is arbitrary bytes, as from a hostile client.
 */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "net/smtp_ext.h"
#include "net/smtpd.h"
#include "net/smtpd_session.h"
#include "fuzz_common.h"
#include "fuzz_session_io.h"

#define FUZZ_SESSION_HOST "mx.hamr.test"

static const char *const fuzz_session_clients[] = {"192.0.2.1", "10.1.2.3", "2001:db8::5",
                                                   "::ffff:10.0.0.9"};

/* fuzz_session_replies - what the session target counts in the replies. */
struct fuzz_session_replies {
    unsigned replies_354, queued_250;
};

/* fuzz_session_sink - the fake sink: holds at most one submit. */
struct fuzz_session_sink {
    int mode; /* 0 commit, 1 fail in callback, 2 fail in submit, 3 hold */
    bool nospace;
    bool ext_no;                   /* ext_ok says no */
    const struct smtpd_session *s; /* for smtpd_session_tls */
    unsigned mails, ids, submits;
    unsigned answered_ok; /* successful callbacks while the client could still hear */
    const struct fuzz_session_policy *fp;
    const struct smtpd_envelope *env;
    uint64_t env_hash;
    smtpd_sink_cb cb;
    void *cb_arg;
    char last_id[SMTPD_QUEUE_ID_MAX];
};

/* fuzz_session_policy - the policy and what the checks need to know about it. */
struct fuzz_session_policy {
    struct smtpd_policy policy;
    struct smtpd_cidr nets[2];
    char *domains[2];
    bool relay_client;
};

/* fuzz_session_count_line - count 354s and "queued as" replies (on_line of the transport). */
static void fuzz_session_count_line(void *owner, const char *l, size_t n)
{
    struct fuzz_session_replies *r = owner;
    if (n >= 3 && memcmp(l, "354", 3) == 0)
        r->replies_354++;
    static const char queued[] = "250 2.0.0 Ok: queued as ";
    if (n >= sizeof(queued) - 1 && memcmp(l, queued, sizeof(queued) - 1) == 0)
        r->queued_250++;
}

/* fuzz_session_new_id - HAMRQ0001, HAMRQ0002, ... */
static int fuzz_session_new_id(void *data, char *id, size_t idlen)
{
    struct fuzz_session_sink *k = data;
    snprintf(id, idlen, "HAMRQ%04u", ++k->ids);
    hamr_strlcpy(k->last_id, id, sizeof(k->last_id));
    return 0;
}

/* fuzz_session_check_mail - "no space" on every other MAIL when asked. */
static int fuzz_session_check_mail(void *data)
{
    struct fuzz_session_sink *k = data;
    k->mails++;
    return k->nospace && k->mails % 2 == 0 ? HAMR_ENOSPACE : 0;
}

/* fuzz_session_ext_ok - the answer byte 1 chose. */
static bool fuzz_session_ext_ok(void *data)
{
    const struct fuzz_session_sink *k = data;
    return !k->ext_no;
}

/* fuzz_session_hash - FNV-1a of n bytes. */
static uint64_t fuzz_session_hash(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* fuzz_session_env_hash - a hash over every byte the envelope points to. */
static uint64_t fuzz_session_env_hash(const struct smtpd_envelope *env)
{
    uint64_t h = 1469598103934665603ull;
    h = fuzz_session_hash(h, env->queue_id, strlen(env->queue_id));
    h = fuzz_session_hash(h, env->client_addr, strlen(env->client_addr));
    h = fuzz_session_hash(h, env->helo, strlen(env->helo) + 1);
    h = fuzz_session_hash(h, env->sender, strlen(env->sender) + 1);
    for (size_t i = 0; i < env->n_rcpts; i++)
        h = fuzz_session_hash(h, env->rcpts[i], strlen(env->rcpts[i]) + 1);
    h = fuzz_session_hash(h, env->body, env->body_len);
    uint8_t flags[3] = {env->smtputf8, env->requiretls, env->ret};
    h = fuzz_session_hash(h, flags, sizeof(flags));
    if (env->envid != NULL)
        h = fuzz_session_hash(h, env->envid, strlen(env->envid) + 1);
    for (size_t i = 0; env->rcpt_dsn != NULL && i < env->n_rcpts; i++) {
        h = fuzz_session_hash(h, &env->rcpt_dsn[i].notify, 1);
        if (env->rcpt_dsn[i].orcpt != NULL)
            h = fuzz_session_hash(h, env->rcpt_dsn[i].orcpt, strlen(env->rcpt_dsn[i].orcpt) + 1);
    }
    return h;
}

/* fuzz_session_relay_domain - domain is one of the policy's relay domains. */
static bool fuzz_session_relay_domain(const char *domain)
{
    size_t n = strlen(domain);
    static const char sub[] = ".sub.hamr.test";
    if (n == 9 && hamr_strncaseeq(domain, "hamr.test", 9))
        return true;
    return n > sizeof(sub) - 1 && hamr_strncaseeq(domain + n - (sizeof(sub) - 1), sub, sizeof(sub));
}

/*
 * fuzz_session_check_addr - a parsed path: printable (with SMTPUTF8,
 * well-formed UTF-8 without controls), bounded, no <> or source route.
 */
static void fuzz_session_check_addr(const char *a, bool utf8)
{
    size_t n = strlen(a);
    FUZZ_CHECK(n <= 256);
    FUZZ_CHECK(utf8 ? smtp_utf8_valid(a, n) : fuzz_is_printable(a, n));
    FUZZ_CHECK(a[0] != '<' && a[0] != '@'); /* no brackets, no source route left */
}

/* fuzz_session_check_ext - the envelope extensions (SECURITY.md S11, S24). */
static void fuzz_session_check_ext(const struct fuzz_session_sink *k,
                                   const struct smtpd_envelope *env)
{
    if (k->ext_no)
        FUZZ_CHECK(!env->smtputf8 && !env->requiretls && env->ret == SMTP_RET_UNSET &&
                   env->envid == NULL && env->rcpt_dsn == NULL);
    FUZZ_CHECK(!env->requiretls || smtpd_session_tls(k->s));
    FUZZ_CHECK(env->ret <= SMTP_RET_HDRS);
    FUZZ_CHECK(env->envid == NULL || smtp_envid_ok(env->envid, strlen(env->envid)));
    if (env->rcpt_dsn == NULL)
        return;
    bool any = false;
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const struct smtp_dsn_rcpt *d = &env->rcpt_dsn[i];
        FUZZ_CHECK((d->notify & ~SMTP_NOTIFY_ALL) == 0);
        FUZZ_CHECK(!(d->notify & SMTP_NOTIFY_NEVER) || d->notify == SMTP_NOTIFY_NEVER);
        any = any || d->notify != 0 || d->orcpt != NULL;
        if (d->orcpt == NULL)
            continue;
        size_t n = strlen(d->orcpt);
        const char *semi = strchr(d->orcpt, ';');
        FUZZ_CHECK(n <= SMTP_ORCPT_MAX && smtp_utf8_valid(d->orcpt, n));
        FUZZ_CHECK(semi != NULL && semi > d->orcpt && semi[1] != '\0');
    }
    FUZZ_CHECK(any);
}

/* fuzz_session_check_env - what a sink may rely on in an envelope. */
static void fuzz_session_check_env(const struct fuzz_session_sink *k,
                                   const struct smtpd_envelope *env)
{
    const struct fuzz_session_policy *fp = k->fp;
    FUZZ_CHECK(strcmp(env->queue_id, k->last_id) == 0);
    FUZZ_CHECK(strlen(env->helo) <= 255 && fuzz_is_printable(env->helo, strlen(env->helo)));
    fuzz_session_check_addr(env->sender, env->smtputf8);
    fuzz_session_check_ext(k, env);
    FUZZ_CHECK(env->n_rcpts >= 1 && env->n_rcpts <= fp->policy.recipient_limit);
    for (size_t i = 0; i < env->n_rcpts; i++) {
        const char *r = env->rcpts[i];
        fuzz_session_check_addr(r, env->smtputf8);
        if (fp->relay_client)
            continue;
        /* <postmaster> with no domain goes to postmaster@hostname (RFC 5321 4.5.1). */
        char pm[sizeof(fp->policy.hostname) + 16];
        snprintf(pm, sizeof(pm), "postmaster@%s", fp->policy.hostname);
        if (fp->policy.postmaster[0] == '\0' && strcmp(r, pm) == 0)
            continue;
        /* SECURITY.md S12: outsiders reach our domains only, never by routing. */
        const char *at = strchr(r, '@');
        FUZZ_CHECK(at != NULL && strchr(at + 1, '@') == NULL);
        FUZZ_CHECK(strchr(r, '%') == NULL && strchr(r, '!') == NULL);
        FUZZ_CHECK(at[1] != '[');
        FUZZ_CHECK(fuzz_session_relay_domain(at + 1));
    }
    static const char received[] = "Received: from ";
    FUZZ_CHECK(env->body_len >= sizeof(received) - 1);
    FUZZ_CHECK(memcmp(env->body, received, sizeof(received) - 1) == 0);
    FUZZ_CHECK(memchr(env->body, '\0', env->body_len) == NULL);
    FUZZ_CHECK(fuzz_crlf_only(env->body, env->body_len));
    FUZZ_CHECK(env->body[env->body_len - 2] == '\r' && env->body[env->body_len - 1] == '\n');
    /* Our Received: header is under 1 KiB; the client's data within the limit. */
    FUZZ_CHECK(env->body_len <= fp->policy.message_size_limit + 1024);
}

/* fuzz_session_submit - check the envelope and hold it (or fail) as the mode says. */
static int fuzz_session_submit(void *data,
                               const struct smtpd_envelope *env,
                               smtpd_sink_cb cb,
                               void *arg)
{
    struct fuzz_session_sink *k = data;
    FUZZ_CHECK(k->cb == NULL); /* one submit at a time */
    k->submits++;
    fuzz_session_check_env(k, env);
    if (k->mode == 2)
        return k->submits % 2 ? HAMR_ENOTLEADER : HAMR_ENOMEM;
    k->env = env;
    k->env_hash = fuzz_session_env_hash(env);
    k->cb = cb;
    k->cb_arg = arg;
    return 0;
}

/* fuzz_session_step - call back the held submit; the envelope must be unchanged. */
static void fuzz_session_step(struct fuzz_session_sink *k, const struct testlib_session_io *io)
{
    FUZZ_CHECK(k->cb != NULL);
    FUZZ_CHECK(fuzz_session_env_hash(k->env) == k->env_hash);
    smtpd_sink_cb cb = k->cb;
    void *arg = k->cb_arg;
    k->cb = NULL;
    k->env = NULL;
    int status = k->mode == 1 ? HAMR_ELEADERSHIPLOST : 0;
    if (status == 0 && io->closes == 0 && !io->released)
        k->answered_ok++;
    cb(arg, status);
}

/* fuzz_session_policy_init - one of four limit sets for the client at index ci. */
static void fuzz_session_policy_init(struct fuzz_session_policy *fp, unsigned limits, unsigned ci)
{
    struct smtpd_policy *p = &fp->policy;
    memset(fp, 0, sizeof(*fp));
    hamr_strlcpy(p->hostname, FUZZ_SESSION_HOST, sizeof(p->hostname));
    fp->nets[0] = (struct smtpd_cidr){.family = AF_INET, .addr = {10}, .prefix = 8};
    fp->nets[1] = (struct smtpd_cidr){.family = AF_INET6, .prefix = 128};
    fp->nets[1].addr[15] = 1; /* ::1 */
    fp->domains[0] = "hamr.test";
    fp->domains[1] = ".sub.hamr.test";
    p->relay_networks = fp->nets;
    p->n_relay_networks = 2;
    p->relay_domains = fp->domains;
    p->n_relay_domains = 2;
    p->command_timeout_ms = 300000;
    p->data_timeout_ms = 300000;
    static const struct {
        size_t size, rcpts, header;
        unsigned hops, errors;
    } sets[4] = {
        {10 * 1024 * 1024, 1000, 100 * 1024, 50, 20},
        {64, 2, 32, 1, 3},
        {1024, 5, 256, 3, 0},
        {0, 1, 0, 0, 1},
    };
    p->message_size_limit = sets[limits].size;
    p->recipient_limit = sets[limits].rcpts;
    p->header_size_limit = sets[limits].header;
    p->hopcount_limit = sets[limits].hops;
    p->max_errors = sets[limits].errors;
    fp->relay_client = ci == 1 || ci == 3;
}

/* LLVMFuzzerInitialize - logs at debug level unless asked to be quiet. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_log_setup();
    return 0;
}

/* LLVMFuzzerTestOneInput - one session from connect to free. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    uint8_t b0 = fuzz_u8(&in), b1 = fuzz_u8(&in);
    unsigned ci = b0 & 3;
    struct fuzz_session_policy fp;
    struct fuzz_session_replies replies = {0};
    bool backlog = (b0 & 0x80) != 0;
    struct testlib_session_io io;
    struct fuzz_session_sink k = {
        .mode = (b0 >> 4) & 3, .nospace = (b0 & 0x40) != 0, .ext_no = (b1 & 0x20) != 0, .fp = &fp};
    bool early_talker = (b1 & 0x10) != 0;

    fuzz_session_policy_init(&fp, (b0 >> 2) & 3, ci);
    FUZZ_CHECK(testlib_session_io_init(&io, false) == 0);
    io.on_line = fuzz_session_count_line;
    io.owner = &replies;
    /* A backlog over the high-water mark when asked. */
    io.queued = backlog ? SMTPD_SESSION_OUT_HIGH + 1 : 0;
    struct smtpd_session_io ops = testlib_session_io_ops(&io);
    ops.write_queued = testlib_session_io_write_queued;
    if (b1 & 0x40)
        ops.starttls = testlib_session_io_starttls;
    const struct smtpd_sink sink = {
        .data = &k,
        .new_id = fuzz_session_new_id,
        .check_mail = fuzz_session_check_mail,
        .ext_ok = fuzz_session_ext_ok,
        .submit = fuzz_session_submit,
    };
    struct smtpd_session *s = NULL;
    FUZZ_CHECK(smtpd_session_new(&fp.policy, &sink, &ops, fuzz_session_clients[ci], &s) == 0);
    k.s = s;
    FUZZ_CHECK(smtpd_session_state(s) == SMTPD_STATE_CONNECTED);

    struct fuzz_session_io_feed feed = {
        .p = in.p, .left = in.n, .cut = b1 & 3, .ending = (b1 >> 2) & 3, .lcg = b1};
    if (!early_talker)
        smtpd_session_greet(s);
    for (size_t reads = 0; feed.left > 0 && io.closes == 0; reads++) {
        fuzz_session_io_feed_read(&feed, s);
        if (early_talker && reads == 0)
            smtpd_session_greet(s); /* too late: the session has hung up */
        /* The sink answers between reads, unless it holds until the end. */
        if (k.cb != NULL && k.mode != 3)
            fuzz_session_step(&k, &io);
        /* The transport drains its backlog between reads. */
        if (backlog) {
            io.queued = 0;
            smtpd_session_write_done(s);
            io.queued = SMTPD_SESSION_OUT_HIGH + 1;
        }
        enum smtpd_state st = smtpd_session_state(s);
        FUZZ_CHECK(st >= SMTPD_STATE_CONNECTED && st < SMTPD_STATE_COUNT);
        FUZZ_CHECK(strcmp(smtpd_state_name(st), "INVALID") != 0);
        FUZZ_CHECK(smtpd_session_submit_pending(s) == (k.cb != NULL));
        FUZZ_CHECK(st != SMTPD_STATE_COMMITTING || k.cb != NULL);
    }
    fuzz_session_io_feed_end(&feed, s);
    if (k.cb != NULL && k.mode != 3)
        fuzz_session_step(&k, &io);
    /* Each message is opened by a 354 or a first BDAT chunk, each with a fresh id. */
    FUZZ_CHECK(k.submits <= k.ids);

    /* The owner lets go; a held submit is answered afterwards (detached session). */
    io.released = true;
    s = smtpd_session_free(s);
    if (k.cb != NULL)
        fuzz_session_step(&k, &io);
    /* 250 queued as: exactly once per successful callback the client could hear. */
    FUZZ_CHECK(replies.queued_250 == k.answered_ok);
    testlib_session_io_free(&io);
    return 0;
}
