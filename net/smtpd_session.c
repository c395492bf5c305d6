/*
 * smtpd_session.c - one inbound SMTP conversation (RFC 5321), socket free.
 *
 * Owns: the parser state (smtpd_reader), the unparsed input held while
 * reading is paused, and at most one transaction (struct smtpd_tx: sender,
 * recipients, queue id, body). Borrows the policy; copies the sink and io
 * vtables. Exports the state machine of smtpd_session.h.
 *
 * Happy path:
 *   greet -> 220; EHLO -> 250 keywords; MAIL -> check_mail -> 250;
 *   RCPT (relay check, recipient map) -> 250; DATA -> new_id -> 354 -> body -> CRLF.CRLF
 *   -> checks -> submit (reading paused, no client deadline) -> sink
 *   callback -> 250 queued as <id> (only on status 0) -> reading resumes and
 *   any commands pipelined after the dot are processed.
 *   BDAT (RFC 3030, SECURITY.md S22): "BDAT n [LAST]" -> the n octets are
 *   read by count (BDAT state, DATA's timeouts), whatever the reply will be
 *   -> 250 per chunk, 503 out of order; the first chunk opens the message
 *   as DATA does; after LAST, DATA's checks and the sink. A BDAT line that
 *   cannot be read: 501 and close.
 * Failure modes:
 *   syntax/order errors reply 5xx and are counted; at max_errors 421 and
 *   close; timeout 421 4.4.2; input before the greeting or body octets
 *   pipelined behind DATA 554 5.5.0 and close, nothing queued; a failed
 *   submit maps its HAMR_E* code through smtpd_reply (4xx: the outcome is
 *   unknown, the client retries); the client vanishing while a submit is
 *   pending leaves the session detached until the sink calls back.
 *
 * Every reply goes through smtpd_session_reply_raw(), which writes, logs
 * rejects, counts errors, and hangs up on 421/221 (Postfix smtpd_chat_reply).
 *
 * Slow clients (SECURITY.md S14). Every wait has a deadline: command_timeout
 * for a command, data_timeout for each read in DATA, both capped at
 * stress_timeout for waits that start while io.stressed says the server is
 * under load. With min_data_rate the DATA phase as a whole has a deadline
 * too (Postfix smtpd_min_data_rate with per-request deadlines): the 354 plus
 * data_timeout plus the octets received in DATA so far / min_data_rate, on
 * io.now's clock. Each read in DATA waits at most until then, and input
 * arriving after it is not looked at; either way 421 4.4.2, nothing is
 * submitted, and the log says reason=data-rate. A client at or above the
 * rate is never cut this way; one that trickles is cut after about
 * data_timeout.
 *
 * AUTH (RFC 4954, SECURITY.md S16): PLAIN (RFC 4616) and LOGIN, offered
 * and accepted only inside TLS. While an AUTH exchange waits for a client
 * response the session reads that line itself (bounded by
 * SMTPD_SESSION_AUTH_LINE_MAX), not through the command reader. Passwords
 * and AUTH payloads are never logged and are wiped after the check. A
 * failure is 535 and counts as an error; auth_max_failures of them give
 * 421 4.7.0 and close. An authenticated session may relay anywhere.
 * The password check (PBKDF2, tens of ms of CPU) goes through
 * io.auth_check when the owner has one (the server runs it on libuv's
 * thread pool); until it calls back the session waits like a pending
 * submit: reading paused, no client deadline, pipelined commands held, and
 * a client that leaves keeps the session alive until the callback. If the
 * check cannot be queued the client gets 454 4.7.0 (temporary). Without the
 * hook the check runs synchronously. Every AUTH command that passes the
 * order checks first counts against the client's AUTH rate (io.auth_rate,
 * Postfix smtpd_client_auth_rate_limit); over it the client gets 450 4.7.1,
 * counted as an error, no password check runs, and the session goes on.
 *
 * Security: parses untrusted input. Lines are bounded by the reader, the
 * held input by SMTPD_SESSION_INPUT_MAX, recipients by recipient_limit,
 * the body by message_size_limit. Client text is logged only through
 * log_printable() and truncated; bodies are never logged. Addresses are
 * parsed strictly (RFC 5321 4.1.2, by smtp_addr) and only printable ASCII
 * survives into replies, logs and the Received: header; under SMTPUTF8 an
 * address may also hold well-formed UTF-8 (no C0 or C1 control), which
 * the Received: header and the envelope carry as it is and replies and
 * logs show escaped. A routed local part (%, !, quoted @) is never
 * rewritten into a destination (SECURITY.md S12).
 *
 * Envelope extensions (SECURITY.md S24), offered and taken only while the
 * sink's ext_ok says yes: SMTPUTF8 (RFC 6531), DSN (RFC 3461: RET, ENVID,
 * NOTIFY, ORCPT; xtext decoded within fixed bounds by net/smtp_ext) and
 * REQUIRETLS (RFC 8689, inside TLS only; outside it 530 5.7.10). Each
 * parameter is taken once (again: 501 5.5.4); not offered, 555 5.5.4 as
 * any unknown parameter.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/smtp_addr.h"
#include "net/smtp_ext.h"
#include "net/smtpd.h"
#include "net/smtpd_auth.h"
#include "net/smtpd_proxy.h"
#include "net/smtpd_rcptmap.h"
#include "net/smtpd_reader.h"
#include "net/smtpd_reply.h"
#include "net/smtpd_session.h"

#define SMTPD_SESSION_HELO_MAX 255
#define SMTPD_SESSION_ADDR_MAX 64
#define SMTPD_SESSION_LOG_TEXT 100 /* Postfix logs client text as %.100s */
/* RFC 4954 4: a response line may be up to 12288 octets, CRLF excluded. */
#define SMTPD_SESSION_AUTH_LINE_MAX 12288
#define SMTPD_SESSION_BODY_KEEP (128 * 1024) /* a larger body buffer is freed after its message */
#define SMTPD_SESSION_AUTH_FAILURES 3        /* auth_max_failures when 0 */
#define SMTPD_SESSION_JUNK_LIMIT 100         /* junk_command_limit when 0 (Postfix's) */
/*
 * A MAIL parameter's value: AUTH= carries a mailbox in xtext, up to three
 * octets per octet. A command line may be longer (SMTPD_READER_LINE_MAX);
 * a longer value is a syntax error, never cut short.
 */
#define SMTPD_PARAM_VALUE_MAX 1024

/* smtpd_auth_step - what an AUTH exchange waits for from the client. */
enum smtpd_auth_step {
    SMTPD_AUTH_STEP_NONE,       /* no exchange: input is commands */
    SMTPD_AUTH_STEP_PLAIN,      /* the PLAIN response after "334 " */
    SMTPD_AUTH_STEP_LOGIN_USER, /* the user name after "334 VXNlcm5hbWU6" */
    SMTPD_AUTH_STEP_LOGIN_PASS, /* the password after "334 UGFzc3dvcmQ6" */
};

/* smtpd_tx - one transaction, MAIL to the end of DATA. Owned by its session. */
struct smtpd_tx {
    char sender[SMTP_ADDR_PATH_MAX + 1];
    bool body_8bit;
    /* The envelope extensions (net/smtp_ext.h), as MAIL gave them. */
    bool ext;        /* the sink's ext_ok said yes at MAIL: RCPT takes NOTIFY and ORCPT */
    bool smtputf8;   /* SMTPUTF8 (RFC 6531): UTF-8 paths */
    bool requiretls; /* REQUIRETLS (RFC 8689) */
    uint8_t ret;     /* enum smtp_ret */
    bool has_envid;
    char envid[SMTP_ENVID_MAX + 1]; /* decoded */
    char **rcpts;
    struct smtp_dsn_rcpt *rcpt_dsn; /* cap_rcpts entries, parallel to rcpts; owns each orcpt */
    bool any_dsn;                   /* some RCPT gave NOTIFY or ORCPT */
    size_t n_rcpts;
    size_t cap_rcpts;
    char queue_id[SMTPD_QUEUE_ID_MAX];
    struct buf body;  /* our Received: header, then the un-stuffed data */
    size_t data_size; /* un-stuffed data octets (without Received:) */
    bool bdat;        /* a BDAT chunk opened the message: DATA and RCPT are out of order */
    struct smtpd_envelope env;
};

struct smtpd_session {
    uint64_t id;
    const struct smtpd_policy *policy;
    struct smtpd_sink sink;
    struct smtpd_session_io io;
    bool io_detached; /* the owner let go: no io calls any more */
    bool closed;      /* io.close has been called */
    char client_addr[SMTPD_SESSION_ADDR_MAX];
    bool relay_client; /* client address inside relay_networks */
    enum smtpd_state state;
    struct smtpd_reader reader;
    struct buf input; /* unparsed input */
    size_t input_off;
    bool processing;
    bool paused;         /* io.pause called and not undone */
    bool output_blocked; /* written output over SMTPD_SESSION_OUT_HIGH */
    bool submit_pending;
    bool auth_pending;                     /* io.auth_check has not called back */
    bool close_after_commit;               /* shutdown: 421 after the pending reply */
    char helo[SMTPD_SESSION_HELO_MAX + 1]; /* printable; "" if none */
    bool esmtp;
    bool tls;           /* STARTTLS accepted: the stream is (becoming) encrypted */
    bool authenticated; /* AUTH succeeded: may relay */
    char auth_user[SMTPD_AUTH_USER_MAX + 1];     /* printable, for logs */
    char auth_shown[SMTPD_SESSION_LOG_TEXT + 1]; /* user of the pending check, for logs */
    unsigned auth_failures;                      /* 535 replies so far */
    enum smtpd_auth_step auth_step;              /* an exchange in progress */
    struct buf auth_line;                        /* the response line so far */
    bool auth_line_too_long;                     /* dropping the rest of it */
    char login_user[SMTPD_AUTH_USER_MAX + 1];    /* LOGIN: the decoded user */
    size_t login_user_len;
    char verb[16]; /* current command, for logs */
    struct smtpd_tx *tx;
    struct buf spare_body; /* the last transaction's body buffer, emptied, for the next */
    unsigned errors;
    unsigned junk; /* NOOP, RSET, VRFY, HELP and empty non-LAST BDAT chunks so far */
    unsigned commands;
    unsigned messages;
    uint64_t data_start_ms;    /* io.now when the 354 went out */
    uint64_t request_start_ms; /* io.now of the last reply: the next command is due
                                  within command_timeout of it, however it trickles in */
    uint64_t data_octets;      /* input received in DATA since then */
    /* The BDAT chunk being read (RFC 3030), its reply due after its last octet. */
    uint64_t bdat_size;              /* octets of the chunk */
    bool bdat_last;                  /* "BDAT n LAST" */
    enum smtpd_state bdat_back;      /* the state after the chunk */
    enum smtpd_reply_id bdat_reject; /* the reply owed instead; SMTPD_REPLY_COUNT: none */
    bool bdat_drop_tx;               /* the message could not be opened: end the transaction */
    char bdat_reject_arg[256];       /* its argument (a hostname fits) */
};

static uint64_t smtpd_session_next_id = 1;

/* Per-state facts (Postfix smtp_proto.c xfer_states/xfer_timeouts style). */
static const struct {
    const char *name;
    enum { SMTPD_SESSION_T_NONE, SMTPD_SESSION_T_COMMAND, SMTPD_SESSION_T_DATA } timeout;
} smtpd_session_states[SMTPD_STATE_COUNT] = {
    [SMTPD_STATE_CONNECTED] = {"CONNECTED", SMTPD_SESSION_T_COMMAND},
    [SMTPD_STATE_GREETED] = {"GREETED", SMTPD_SESSION_T_COMMAND},
    [SMTPD_STATE_READY] = {"READY", SMTPD_SESSION_T_COMMAND},
    [SMTPD_STATE_MAIL] = {"MAIL", SMTPD_SESSION_T_COMMAND},
    [SMTPD_STATE_RCPT] = {"RCPT", SMTPD_SESSION_T_COMMAND},
    [SMTPD_STATE_DATA] = {"DATA", SMTPD_SESSION_T_DATA},
    [SMTPD_STATE_BDAT] = {"BDAT", SMTPD_SESSION_T_DATA},
    [SMTPD_STATE_COMMITTING] = {"COMMITTING", SMTPD_SESSION_T_NONE},
    [SMTPD_STATE_CLOSING] = {"CLOSING", SMTPD_SESSION_T_NONE},
};

static void smtpd_session_process(struct smtpd_session *s);
static uint64_t smtpd_session_now(const struct smtpd_session *s);
static void smtpd_session_time_out(struct smtpd_session *s, const char *reason);
static void smtpd_session_free_now(struct smtpd_session *s);

/* smtpd_state_name - the name of a state. */
const char *smtpd_state_name(enum smtpd_state state)
{
    if ((int)state < 0 || state >= SMTPD_STATE_COUNT)
        return "INVALID";
    return smtpd_session_states[state].name;
}

/* smtpd_session_enter_state - the one place the state changes; CLOSING is final. */
static void smtpd_session_enter_state(struct smtpd_session *s, enum smtpd_state next)
{
    if (s->state == next || s->state == SMTPD_STATE_CLOSING)
        return;
    log_debug("smtpd session=%" PRIu64 " state %s -> %s", s->id, smtpd_state_name(s->state),
              smtpd_state_name(next));
    s->state = next;
}

/* ------------------------------------------------------------------ */
/* Transactions                                                        */
/* ------------------------------------------------------------------ */

/* smtpd_tx_free - release a transaction and everything it holds. Returns NULL. */
static struct smtpd_tx *smtpd_tx_free(struct smtpd_tx *tx)
{
    if (tx == NULL)
        return NULL;
    for (size_t i = 0; i < tx->n_rcpts; i++) {
        free(tx->rcpts[i]);
        free((char *)tx->rcpt_dsn[i].orcpt);
    }
    free(tx->rcpts);
    free(tx->rcpt_dsn);
    buf_free(&tx->body);
    free(tx);
    return NULL;
}

/*
 * smtpd_session_tx_reset - drop the transaction (RSET, HELO, end of DATA).
 * Its body buffer is kept for the session's next message when it is at most
 * SMTPD_SESSION_BODY_KEEP: a client sending message after message then fills
 * one buffer instead of growing a new one from nothing each time.
 */
static void smtpd_session_tx_reset(struct smtpd_session *s)
{
    HAMR_ASSERT(!s->submit_pending);
    if (s->tx != NULL && s->tx->bdat)
        smtpd_reader_forget_body(&s->reader);
    if (s->tx != NULL && s->tx->body.data != NULL && s->tx->body.cap <= SMTPD_SESSION_BODY_KEEP &&
        s->spare_body.data == NULL) {
        s->spare_body = s->tx->body;
        buf_reset(&s->spare_body);
        buf_init(&s->tx->body, 0);
    }
    s->tx = smtpd_tx_free(s->tx);
}

/* smtpd_tx_grow - room for one more recipient in rcpts and rcpt_dsn. HAMR_ENOMEM. */
static int smtpd_tx_grow(struct smtpd_tx *tx)
{
    if (tx->n_rcpts < tx->cap_rcpts)
        return 0;
    size_t cap = tx->cap_rcpts ? tx->cap_rcpts * 2 : 8;
    char **p = realloc(tx->rcpts, cap * sizeof(*p));
    if (p == NULL)
        return HAMR_ENOMEM;
    tx->rcpts = p;
    struct smtp_dsn_rcpt *d = realloc(tx->rcpt_dsn, cap * sizeof(*d));
    if (d == NULL)
        return HAMR_ENOMEM; /* rcpts is larger than needed; cap_rcpts stays right for both */
    tx->rcpt_dsn = d;
    tx->cap_rcpts = cap;
    return 0;
}

/*
 * smtpd_tx_add_rcpt - copy rcpt, with its DSN parameters (dsn; its orcpt
 * copied too), into tx. HAMR_ENOMEM.
 */
static int smtpd_tx_add_rcpt(struct smtpd_tx *tx, const char *rcpt, const struct smtp_dsn_rcpt *dsn)
{
    if (smtpd_tx_grow(tx) != 0)
        return HAMR_ENOMEM;
    char *copy = strdup(rcpt);
    char *orcpt = dsn->orcpt != NULL ? strdup(dsn->orcpt) : NULL;
    if (copy == NULL || (dsn->orcpt != NULL && orcpt == NULL)) {
        free(copy);
        free(orcpt);
        return HAMR_ENOMEM;
    }
    tx->rcpt_dsn[tx->n_rcpts] = (struct smtp_dsn_rcpt){.notify = dsn->notify, .orcpt = orcpt};
    tx->rcpts[tx->n_rcpts++] = copy;
    if (dsn->notify != 0 || orcpt != NULL)
        tx->any_dsn = true;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Output                                                              */
/* ------------------------------------------------------------------ */

/* smtpd_session_hangup - close the transport once; the session goes CLOSING. */
static void smtpd_session_hangup(struct smtpd_session *s)
{
    smtpd_session_enter_state(s, SMTPD_STATE_CLOSING);
    if (s->closed || s->io_detached)
        return;
    s->closed = true;
    s->io.set_timer(s->io.data, 0);
    s->io.close(s->io.data);
}

/* smtpd_session_log_text - printable, truncated copy of client text for a log line. */
static const char *smtpd_session_log_text(char *out, size_t outlen, const char *in, size_t inlen)
{
    return log_printable(out, outlen, in, inlen);
}

/*
 * smtpd_session_reply_raw - the one writer of replies. text holds one or
 * more complete CRLF lines. Logs rejects, counts errors, hangs up after a
 * 421 or when hangup is set, and after max_errors (421 4.7.0).
 */
static void smtpd_session_reply_raw(struct smtpd_session *s,
                                    int code,
                                    bool counts,
                                    bool hangup,
                                    const char *text,
                                    size_t len)
{
    if (s->io_detached || s->closed)
        return;
    s->request_start_ms = smtpd_session_now(s);
    if (s->io.write(s->io.data, text, len) != 0) {
        log_warn("smtpd session=%" PRIu64 " write failed client=%s", s->id, s->client_addr);
        smtpd_session_hangup(s);
        return;
    }
    if (code >= 400 && s->policy->observer.reply != NULL)
        s->policy->observer.reply(s->policy->observer.data, code);
    if (code >= 400) {
        char shown[SMTPD_SESSION_LOG_TEXT + 1];
        size_t n = len >= 2 ? len - 2 : len; /* without CRLF */
        log_info("smtpd session=%" PRIu64 " reject client=%s cmd=%s code=%d reply=\"%s\"", s->id,
                 s->client_addr, s->verb[0] ? s->verb : "-", code,
                 smtpd_session_log_text(shown, sizeof(shown), text, n));
    }
    if (s->io.write_queued != NULL && s->io.write_queued(s->io.data) > SMTPD_SESSION_OUT_HIGH)
        s->output_blocked = true;
    if (code == 421 || hangup) {
        smtpd_session_hangup(s);
        return;
    }
    if (counts) {
        s->errors++;
        if (s->policy->max_errors > 0 && s->errors >= s->policy->max_errors) {
            char line[SMTPD_REPLY_LINE_MAX];
            size_t n = smtpd_reply_format(SMTPD_REPLY_TOO_MANY_ERRORS, s->policy->hostname, line,
                                          sizeof(line));
            smtpd_session_reply_raw(s, 421, false, true, line, n);
        }
    }
}

/* smtpd_session_reply - send one reply from the table; arg replaces its "%s". */
static void smtpd_session_reply(struct smtpd_session *s, enum smtpd_reply_id id, const char *arg)
{
    const struct smtpd_reply *r = smtpd_reply_get(id);
    char line[SMTPD_REPLY_LINE_MAX];
    size_t n = smtpd_reply_format(id, arg, line, sizeof(line));
    bool hangup =
        r->code == 221 || r->code == 421 || id == SMTPD_REPLY_PREGREET || id == SMTPD_REPLY_DESYNC;

    smtpd_session_reply_raw(s, r->code, r->counts_as_error, hangup, line, n);
}

/* smtpd_session_update_reading - pause or resume input to match the state. */
static void smtpd_session_update_reading(struct smtpd_session *s)
{
    if (s->io_detached || s->closed)
        return;
    bool want_pause = s->submit_pending || s->auth_pending || s->output_blocked;
    if (want_pause && !s->paused) {
        s->paused = true;
        s->io.pause(s->io.data);
    } else if (!want_pause && s->paused) {
        s->paused = false;
        s->io.resume(s->io.data);
    }
}

/* smtpd_session_now - the owner's clock in ms, else the monotonic clock. */
static uint64_t smtpd_session_now(const struct smtpd_session *s)
{
    if (s->io.now != NULL)
        return s->io.now(s->io.data);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* smtpd_session_wait - a configured timeout, capped at stress_timeout under load. */
static uint64_t smtpd_session_wait(const struct smtpd_session *s, uint64_t ms)
{
    uint64_t cap = s->policy->stress_timeout_ms;
    if (cap > 0 && ms > cap && s->io.stressed != NULL && s->io.stressed(s->io.data))
        return cap;
    return ms;
}

/*
 * smtpd_session_data_deadline - when the DATA phase must be over under
 * min_data_rate (call only in DATA with the rate on): the 354, plus the
 * data timeout, plus the time the octets received so far buy.
 */
static uint64_t smtpd_session_data_deadline(const struct smtpd_session *s)
{
    uint64_t rate = s->policy->min_data_rate;
    uint64_t earned = s->data_octets / rate * 1000 + s->data_octets % rate * 1000 / rate;
    return s->data_start_ms + smtpd_session_wait(s, s->policy->data_timeout_ms) + earned;
}

/* smtpd_session_timeout_ms - the client deadline wanted in the current state. */
uint64_t smtpd_session_timeout_ms(const struct smtpd_session *s)
{
    if (s->submit_pending || s->auth_pending || s->io_detached)
        return 0; /* the sink's (or the check's) own time applies, not the client's */
    switch (smtpd_session_states[s->state].timeout) {
        case SMTPD_SESSION_T_COMMAND: {
            /* Per request, as Postfix's smtpd_per_request_deadline: octets
             * that trickle in do not buy time, a reply does. */
            uint64_t ms = smtpd_session_wait(s, s->policy->command_timeout_ms);
            uint64_t deadline = s->request_start_ms + ms;
            uint64_t now = smtpd_session_now(s);
            uint64_t left = deadline > now ? deadline - now : 1; /* due: fire at once */
            return left < ms ? left : ms;
        }
        case SMTPD_SESSION_T_DATA: {
            uint64_t ms = smtpd_session_wait(s, s->policy->data_timeout_ms);
            if (s->policy->min_data_rate == 0)
                return ms;
            uint64_t deadline = smtpd_session_data_deadline(s);
            uint64_t now = smtpd_session_now(s);
            uint64_t left = deadline > now ? deadline - now : 1; /* due: fire at once */
            return left < ms ? left : ms;
        }
        default:
            return 0;
    }
}

/* smtpd_session_arm_timer - restart the deadline for the current state. */
static void smtpd_session_arm_timer(struct smtpd_session *s)
{
    if (s->io_detached || s->closed)
        return;
    s->io.set_timer(s->io.data, smtpd_session_timeout_ms(s));
}

/* ------------------------------------------------------------------ */
/* Addresses (RFC 5321 4.1.2, parsed by smtp_addr)                     */
/* ------------------------------------------------------------------ */

/*
 * smtpd_session_parse_path - parse "<path>" at *pp into a (smtp_addr_parse_path
 * with flags). On success *pp points after '>' and SMTPD_REPLY_COUNT is
 * returned; otherwise the reply to give: SMTPD_REPLY_UTF8 for 8-bit octets
 * without SMTP_ADDR_UTF8_OK (SMTPUTF8 was not declared), else bad_syntax
 * (malformed UTF-8 included).
 */
static enum smtpd_reply_id smtpd_session_parse_path(const char **pp,
                                                    struct smtp_addr *a,
                                                    unsigned flags,
                                                    enum smtpd_reply_id bad_syntax)
{
    int rc = smtp_addr_parse_path(pp, flags, a);
    if (rc == HAMR_EPROTO)
        return SMTPD_REPLY_UTF8;
    return rc == 0 ? SMTPD_REPLY_COUNT : bad_syntax;
}

/* smtpd_session_in_relay_networks - is the client address inside a relay network? */
static bool smtpd_session_in_relay_networks(const struct smtpd_policy *p, const char *client)
{
    return smtpd_proxy_addr_in(p->relay_networks, p->n_relay_networks, client);
}

/*
 * smtpd_session_relay_domain - is domain one of ours ("d" exact, ".d"
 * subdomains, ASCII case ignored)? A U-label domain (SMTPUTF8) matches
 * octet for octet: relay_domains are ASCII and nothing here converts
 * between U-labels and A-labels (no IDNA), so it can be ours only under a
 * ".d" entry, as "b\xc3\xbccher.hamr.test" is under ".hamr.test".
 */
static bool smtpd_session_relay_domain(const struct smtpd_policy *p, const char *domain)
{
    size_t dlen = strlen(domain);

    for (size_t i = 0; i < p->n_relay_domains; i++)
        if (smtp_addr_domain_match(domain, dlen, p->relay_domains[i]) != SMTP_ADDR_MATCH_NONE)
            return true;
    return false;
}

/*
 * smtpd_session_relay_ok - may this recipient be accepted (SECURITY.md S12)?
 * Relay networks and authenticated clients may send anywhere, and their
 * addresses are taken literally. Everyone else only to our relay domains,
 * never to an address literal, and never with a routed local part (%, !,
 * quoted @), which we do not rewrite and so cannot tell where it would go.
 */
static bool smtpd_session_relay_ok(const struct smtpd_session *s, const struct smtp_addr *a)
{
    if (s->relay_client || s->authenticated)
        return true;
    if (a->routed || !a->has_domain || a->literal)
        return false;
    return smtpd_session_relay_domain(s->policy, a->text + a->domain);
}

/*
 * smtpd_session_rcpt_known - with a relay recipient map, does a recipient
 * at one of our relay domains exist (SECURITY.md S20; Postfix
 * relay_recipient_maps with smtpd_reject_unlisted_recipient)? Asked of
 * every client, relay networks and authenticated ones too: an unknown user
 * is unknown whoever sends to it, and accepting it only makes a bounce.
 * a->text has no source route, so the final address is looked up.
 * Recipients elsewhere are not ours to know.
 */
static bool smtpd_session_rcpt_known(const struct smtpd_session *s, const struct smtp_addr *a)
{
    if (s->policy->rcptmap == NULL || !a->has_domain || a->literal ||
        !smtpd_session_relay_domain(s->policy, a->text + a->domain))
        return true;
    return smtpd_rcptmap_lookup(s->policy->rcptmap, a->text) == 0;
}

/* ------------------------------------------------------------------ */
/* Commands                                                            */
/* ------------------------------------------------------------------ */

/*
 * Command flags. RFC 2920 3.1: DATA must be the last command of a
 * pipelined group, since what follows it is message content only after the
 * 354; anything pipelined behind it is a desync (SECURITY.md S5). EHLO,
 * NOOP, VRFY and QUIT are also "last in group" there, but their replies do
 * not change how later input is parsed, so we process what follows them.
 */
#define SMTPD_CMD_SYNC 0x01   /* input after it in the same read is a desync */
#define SMTPD_CMD_NO_ARG 0x02 /* RFC 5321 4.1.1: takes no argument */
#define SMTPD_CMD_NEED_ARG 0x04

struct smtpd_cmd {
    const char *name;
    unsigned flags;
    /* check - order and syntax; replies itself and returns -1 to stop. */
    int (*check)(struct smtpd_session *s, const char *arg);
    /* proceed - do the command; may finish later from a callback. */
    void (*proceed)(struct smtpd_session *s, const char *arg);
};

/* smtpd_session_need_helo - 503 unless HELO/EHLO came first. */
static int smtpd_session_need_helo(struct smtpd_session *s)
{
    if (s->state == SMTPD_STATE_GREETED) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_ORDER, "send HELO/EHLO first");
        return -1;
    }
    return 0;
}

/* smtpd_session_check_none - no conditions. */
static int smtpd_session_check_none(struct smtpd_session *s, const char *arg)
{
    return 0;
}

/* smtpd_session_auth_offered - EHLO lists AUTH (RFC 4954 4 / SECURITY.md S17: only inside TLS). */
static bool smtpd_session_auth_offered(const struct smtpd_session *s)
{
    return s->policy->auth != NULL && s->tls;
}

/*
 * smtpd_session_ext_offered - may the session offer and take SMTPUTF8, DSN
 * and REQUIRETLS now? The sink says whether every voter can replicate
 * them (asked at EHLO and again at MAIL, since that can change between).
 */
static bool smtpd_session_ext_offered(const struct smtpd_session *s)
{
    return s->sink.ext_ok == NULL || s->sink.ext_ok(s->sink.data);
}

/* smtpd_session_proceed_helo - HELO and EHLO (RFC 5321 4.1.1.1): reset, greet back. */
static void smtpd_session_proceed_helo(struct smtpd_session *s, const char *arg)
{
    size_t n = strlen(arg);

    while (n > 0 && arg[n - 1] == ' ')
        n--;
    smtpd_session_tx_reset(s);
    log_printable(s->helo, sizeof(s->helo), arg, n);
    s->esmtp = hamr_strncaseeq(s->verb, "EHLO", 5);
    smtpd_session_enter_state(s, SMTPD_STATE_READY);
    if (!s->esmtp) {
        char line[SMTPD_REPLY_LINE_MAX];
        int len = snprintf(line, sizeof(line), "250 %s\r\n", s->policy->hostname);
        smtpd_session_reply_raw(s, 250, false, false, line, (size_t)len);
        return;
    }
    /*
     * RFC 2920, RFC 1870, RFC 6152, RFC 3030 (CHUNKING without BINARYMIME:
     * SECURITY.md S22), RFC 6531, RFC 3461, RFC 3207, RFC 4954, RFC 8689,
     * RFC 2034. STARTTLS only before TLS (RFC 3207 4.2); REQUIRETLS only
     * inside it (RFC 8689 2); the three envelope extensions only while the
     * sink's ext_ok says yes.
     */
    char text[SMTPD_REPLY_LINE_MAX * 2];
    bool offer_tls = s->io.starttls != NULL && !s->tls;
    bool offer_auth = smtpd_session_auth_offered(s);
    bool offer_ext = smtpd_session_ext_offered(s);
    int len =
        snprintf(text, sizeof(text),
                 "250-%s\r\n250-PIPELINING\r\n250-SIZE %zu\r\n250-8BITMIME\r\n"
                 "250-CHUNKING\r\n%s%s%s%s250 ENHANCEDSTATUSCODES\r\n",
                 s->policy->hostname, s->policy->message_size_limit,
                 offer_ext ? "250-SMTPUTF8\r\n250-DSN\r\n" : "",
                 offer_tls ? "250-STARTTLS\r\n" : "", offer_auth ? "250-AUTH PLAIN LOGIN\r\n" : "",
                 offer_ext && s->tls ? "250-REQUIRETLS\r\n" : "");
    HAMR_ASSERT(len > 0 && (size_t)len < sizeof(text));
    smtpd_session_reply_raw(s, 250, false, false, text, (size_t)len);
}

/*
 * smtpd_session_check_helo - HELO/EHLO need a hostname, in ASCII even when
 * SMTPUTF8 is offered (a client gives an internationalised name in
 * A-labels there). Other odd octets are only escaped where the name is
 * shown.
 */
static int smtpd_session_check_helo(struct smtpd_session *s, const char *arg)
{
    while (*arg == ' ')
        arg++;
    bool ascii = true;
    for (const char *p = arg; *p != '\0'; p++)
        ascii = ascii && (unsigned char)*p < 0x80;
    if (*arg == '\0' || !ascii) {
        smtpd_session_reply(s, SMTPD_REPLY_HELO_SYNTAX, s->verb);
        return -1;
    }
    return 0;
}

/*
 * smtpd_session_utf8_ok - is p[0..len) well-formed UTF-8 (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF)? ASCII always is.
 */
static bool smtpd_session_utf8_ok(const char *p, size_t len)
{
    const unsigned char *u = (const unsigned char *)p;
    size_t i = 0;
    while (i < len) {
        unsigned char c = u[i];
        size_t n;
        unsigned char lo = 0x80, hi = 0xbf; /* the range of the second octet */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            lo = c == 0xe0 ? 0xa0 : 0x80;
            hi = c == 0xed ? 0x9f : 0xbf;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            lo = c == 0xf0 ? 0x90 : 0x80;
            hi = c == 0xf4 ? 0x8f : 0xbf;
        } else {
            return false;
        }
        if (len - i - 1 < n || u[i + 1] < lo || u[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= n; k++)
            if (u[i + k] < 0x80 || u[i + k] > 0xbf)
                return false;
        i += n + 1;
    }
    return true;
}

/* smtpd_session_parse_keyword - "FROM:" or "TO:" then optional spaces; NULL if absent. */
static const char *smtpd_session_parse_keyword(const char *arg, const char *kw)
{
    size_t n = strlen(kw);
    if (!hamr_strncaseeq(arg, kw, n))
        return NULL;
    arg += n;
    while (*arg == ' ')
        arg++; /* tolerated, as Postfix does: "MAIL FROM: <a@b>" */
    return arg;
}

/* smtpd_session_is_letdig - RFC 5321 Let-dig (ALPHA / DIGIT). */
static bool smtpd_session_is_letdig(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/*
 * smtpd_session_next_param - split off the next "KEY[=VALUE]"; NULL at the
 * end. utf8: SMTPUTF8 was given, and a value may hold UTF-8 too (RFC 6531
 * 3.3: esmtp-value =/ UTF8-non-ascii; the command line is well-formed
 * UTF-8 by then).
 */
static const char *smtpd_session_next_param(const char *p,
                                            bool utf8,
                                            char *key,
                                            size_t keylen,
                                            char *value,
                                            size_t valuelen,
                                            bool *bad)
{
    *bad = false;
    while (*p == ' ')
        p++;
    if (*p == '\0')
        return NULL;
    size_t k = 0, v = 0;
    /* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") */
    while (smtpd_session_is_letdig((unsigned char)*p) || (k > 0 && *p == '-')) {
        if (k + 1 < keylen)
            key[k++] = *p;
        else
            *bad = true;
        p++;
    }
    key[k] = '\0';
    value[0] = '\0';
    if (k == 0)
        *bad = true;
    if (*p == '=') {
        p++;
        /* esmtp-value = 1*(%d33-60 / %d62-126) */
        while ((*p > 32 && *p < 127 && *p != '=') || (utf8 && (unsigned char)*p >= 0x80)) {
            if (v + 1 < valuelen)
                value[v++] = *p;
            else
                *bad = true;
            p++;
        }
        value[v] = '\0';
        if (v == 0)
            *bad = true;
    }
    if (*p != ' ' && *p != '\0') {
        *bad = true;
        while (*p != ' ' && *p != '\0')
            p++;
    }
    return p;
}

/* smtpd_session_parse_size - decimal SIZE value without overflow. */
static bool smtpd_session_parse_size(const char *v, uint64_t *out)
{
    uint64_t n = 0;
    if (*v == '\0')
        return false;
    for (; *v; v++) {
        if (*v < '0' || *v > '9')
            return false;
        if (n > (UINT64_MAX - 9) / 10)
            return false;
        n = n * 10 + (uint64_t)(*v - '0');
    }
    *out = n;
    return true;
}

/*
 * smtpd_session_xtext_ok - v is xtext (RFC 3461 4): printable ASCII but '+'
 * and '=', or '+' and two upper-case hex digits. "<>" is xtext too.
 */
static bool smtpd_session_xtext_ok(const char *v)
{
    if (*v == '\0')
        return false;
    for (; *v; v++) {
        if (*v == '+') {
            for (int k = 1; k <= 2; k++)
                if (!((v[k] >= '0' && v[k] <= '9') || (v[k] >= 'A' && v[k] <= 'F')))
                    return false;
            v += 2;
        } else if (*v < 33 || *v > 126 || *v == '=') {
            return false;
        }
    }
    return true;
}

/* smtpd_session_check_mail - order, path and parameters (RFC 5321 4.1.1.2, RFC 1870, RFC 6152). */
static int smtpd_session_check_mail(struct smtpd_session *s, const char *arg)
{
    if (smtpd_session_need_helo(s) != 0)
        return -1;
    if (s->state != SMTPD_STATE_READY) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_ORDER, "nested MAIL command");
        return -1;
    }
    return 0;
}

/* smtpd_mail_params - what MAIL's parameters asked for. */
struct smtpd_mail_params {
    bool ext; /* SMTPUTF8, DSN and REQUIRETLS are offered */
    bool body_8bit;
    bool smtputf8;
    bool requiretls;
    uint8_t ret;
    bool has_envid;
    char envid[SMTP_ENVID_MAX + 1];
    unsigned seen; /* bit i: smtpd_mail_ext_names[i] was given */
};

/* The extension parameters of MAIL; each may be given once. */
enum { SMTPD_MAIL_SMTPUTF8, SMTPD_MAIL_RET, SMTPD_MAIL_ENVID, SMTPD_MAIL_REQUIRETLS };
static const char *const smtpd_mail_ext_names[] = {"SMTPUTF8", "RET", "ENVID", "REQUIRETLS"};

/* smtpd_session_param_index - the index of key in names (any case), or n if not there. */
static size_t smtpd_session_param_index(const char *key, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (hamr_strncaseeq(key, names[i], strlen(names[i]) + 1))
            return i;
    return n;
}

/*
 * smtpd_session_mail_ext - one of MAIL's extension parameters into mp:
 * SMTPUTF8 (RFC 6531 3.4, no value), RET=FULL|HDRS and ENVID=xtext (RFC
 * 3461 4.3, 4.4; the decoded ENVID is 1 to 100 printable ASCII octets),
 * REQUIRETLS (RFC 8689 4, no value, inside TLS only). value is "" when
 * none was given. SMTPD_REPLY_COUNT when taken; otherwise the reply, with
 * *name its argument. A key that is none of them, or any of them while
 * they are not offered: SMTPD_REPLY_PARAM_UNKNOWN.
 */
static enum smtpd_reply_id smtpd_session_mail_ext(const struct smtpd_session *s,
                                                  const char *key,
                                                  const char *value,
                                                  struct smtpd_mail_params *mp,
                                                  const char **name)
{
    size_t i =
        smtpd_session_param_index(key, smtpd_mail_ext_names, HAMR_ARRAY_LEN(smtpd_mail_ext_names));
    size_t n;

    *name = key;
    if (i == HAMR_ARRAY_LEN(smtpd_mail_ext_names) || !mp->ext)
        return SMTPD_REPLY_PARAM_UNKNOWN;
    *name = smtpd_mail_ext_names[i];
    if (mp->seen & (1u << i))
        return SMTPD_REPLY_PARAM_TWICE;
    mp->seen |= 1u << i;
    switch (i) {
        case SMTPD_MAIL_SMTPUTF8:
            if (value[0] != '\0')
                return SMTPD_REPLY_PARAM_SYNTAX;
            mp->smtputf8 = true;
            break;
        case SMTPD_MAIL_RET:
            if (hamr_strncaseeq(value, "FULL", 5))
                mp->ret = SMTP_RET_FULL;
            else if (hamr_strncaseeq(value, "HDRS", 5))
                mp->ret = SMTP_RET_HDRS;
            else
                return SMTPD_REPLY_PARAM_SYNTAX;
            break;
        case SMTPD_MAIL_ENVID:
            if (!smtp_xtext_decode(value, strlen(value), mp->envid, sizeof(mp->envid), &n) ||
                !smtp_envid_ok(mp->envid, n))
                return SMTPD_REPLY_PARAM_SYNTAX;
            mp->has_envid = true;
            break;
        case SMTPD_MAIL_REQUIRETLS:
            if (value[0] != '\0')
                return SMTPD_REPLY_PARAM_SYNTAX;
            if (!s->tls)
                return SMTPD_REPLY_REQUIRETLS_TLS; /* RFC 8689 2: not offered outside TLS */
            mp->requiretls = true;
            break;
    }
    return SMTPD_REPLY_COUNT;
}

/*
 * smtpd_session_mail_param - one MAIL parameter into mp. SMTPD_REPLY_COUNT
 * when taken; otherwise the reply, with *arg its argument.
 */
static enum smtpd_reply_id smtpd_session_mail_param(const struct smtpd_session *s,
                                                    const char *key,
                                                    const char *value,
                                                    struct smtpd_mail_params *mp,
                                                    const char **arg)
{
    *arg = NULL;
    if (hamr_strncaseeq(key, "SIZE", 5)) {
        uint64_t size;
        *arg = "SIZE";
        if (!smtpd_session_parse_size(value, &size))
            return SMTPD_REPLY_PARAM_SYNTAX;
        if (size > s->policy->message_size_limit)
            return SMTPD_REPLY_SIZE_EXCEEDED;
    } else if (hamr_strncaseeq(key, "BODY", 5)) {
        *arg = "BODY";
        if (hamr_strncaseeq(value, "8BITMIME", 9))
            mp->body_8bit = true;
        else if (hamr_strncaseeq(value, "7BIT", 5))
            mp->body_8bit = false;
        else
            return SMTPD_REPLY_PARAM_SYNTAX;
    } else if (hamr_strncaseeq(key, "AUTH", 5) && smtpd_session_auth_offered(s)) {
        /*
         * RFC 4954 5: a server that offers AUTH takes the parameter
         * (the original submitter, xtext, or <> for unknown). hamr does
         * not pass it on, which RFC 4954 allows: it is as if the next
         * hop were told AUTH=<>.
         */
        *arg = "AUTH";
        if (!smtpd_session_xtext_ok(value))
            return SMTPD_REPLY_PARAM_SYNTAX;
    } else {
        return smtpd_session_mail_ext(s, key, value, mp, arg);
    }
    return SMTPD_REPLY_COUNT;
}

/*
 * smtpd_session_open_tx - a transaction for sender with MAIL's parameters.
 * NULL: out of memory.
 */
static struct smtpd_tx *smtpd_session_open_tx(struct smtpd_session *s,
                                              const char *sender,
                                              const struct smtpd_mail_params *mp)
{
    struct smtpd_tx *tx = calloc(1, sizeof(*tx));
    if (tx == NULL)
        return NULL;
    hamr_strlcpy(tx->sender, sender, sizeof(tx->sender));
    tx->body_8bit = mp->body_8bit;
    tx->ext = mp->ext;
    tx->smtputf8 = mp->smtputf8;
    tx->requiretls = mp->requiretls;
    tx->ret = mp->ret;
    tx->has_envid = mp->has_envid;
    memcpy(tx->envid, mp->envid, sizeof(tx->envid));
    /* The reader stores at most message_size_limit; the rest is our Received:. */
    size_t limit = s->policy->message_size_limit;
    buf_init(&tx->body, limit > SIZE_MAX - 2048 ? 0 : limit + 2048);
    if (s->spare_body.data != NULL && s->spare_body.cap <= tx->body.limit) {
        tx->body.data = s->spare_body.data;
        tx->body.cap = s->spare_body.cap;
        buf_init(&s->spare_body, 0);
    }
    return tx;
}

/*
 * smtpd_session_proceed_mail - parse, ask the sink, open the transaction.
 * While the extensions are offered the path is parsed as SMTPUTF8 would
 * have it, since the parameter comes after it; a path that is not ASCII
 * then needs SMTPUTF8 among the parameters (RFC 6531 3.4: 553 5.6.7).
 */
static void smtpd_session_proceed_mail(struct smtpd_session *s, const char *arg)
{
    struct smtp_addr a;
    struct smtpd_mail_params mp = {.ext = smtpd_session_ext_offered(s)};
    const char *p = smtpd_session_parse_keyword(arg, "FROM:");
    int rc;

    if (p == NULL) {
        smtpd_session_reply(s, SMTPD_REPLY_SENDER_SYNTAX, NULL);
        return;
    }
    enum smtpd_reply_id bad = smtpd_session_parse_path(
        &p, &a, SMTP_ADDR_NULL_OK | (mp.ext ? SMTP_ADDR_UTF8_OK : 0), SMTPD_REPLY_SENDER_SYNTAX);
    if (bad != SMTPD_REPLY_COUNT) {
        smtpd_session_reply(s, bad, NULL);
        return;
    }
    char key[32], value[SMTPD_PARAM_VALUE_MAX];
    bool bad_param;
    while ((p = smtpd_session_next_param(p, false, key, sizeof(key), value, sizeof(value),
                                         &bad_param))) {
        const char *reply_arg;
        if (bad_param) {
            smtpd_session_reply(s, SMTPD_REPLY_SENDER_SYNTAX, NULL);
            return;
        }
        bad = smtpd_session_mail_param(s, key, value, &mp, &reply_arg);
        if (bad != SMTPD_REPLY_COUNT) {
            smtpd_session_reply(s, bad, reply_arg);
            return;
        }
    }
    if (!mp.smtputf8 && !smtp_is_ascii(a.text, strlen(a.text))) {
        smtpd_session_reply(s, SMTPD_REPLY_UTF8, NULL);
        return;
    }
    if (s->sink.check_mail != NULL) {
        rc = s->sink.check_mail(s->sink.data);
        if (rc != 0) {
            smtpd_session_reply(s, smtpd_reply_for_error(rc), s->policy->hostname);
            return;
        }
    }
    struct smtpd_tx *tx = smtpd_session_open_tx(s, a.text, &mp);
    if (tx == NULL) {
        smtpd_session_reply(s, SMTPD_REPLY_LOCAL_ERROR, NULL);
        return;
    }
    s->tx = tx;
    smtpd_session_enter_state(s, SMTPD_STATE_MAIL);
    smtpd_session_reply(s, SMTPD_REPLY_MAIL_OK, NULL);
}

/* smtpd_session_check_rcpt - RCPT needs MAIL first. */
static int smtpd_session_check_rcpt(struct smtpd_session *s, const char *arg)
{
    if (smtpd_session_need_helo(s) != 0)
        return -1;
    if (s->state != SMTPD_STATE_MAIL && s->state != SMTPD_STATE_RCPT) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_ORDER, "need MAIL command");
        return -1;
    }
    if (s->tx->bdat) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_ORDER, "BDAT in progress");
        return -1;
    }
    return 0;
}

/* smtpd_rcpt_params - what RCPT's parameters asked for (RFC 3461 4.1, 4.2). */
struct smtpd_rcpt_params {
    uint8_t notify; /* SMTP_NOTIFY_* bits, 0 if not given */
    bool has_orcpt;
    char orcpt[SMTP_ORCPT_MAX + 1]; /* "type;address", decoded */
    unsigned seen;                  /* bit i: smtpd_rcpt_ext_names[i] was given */
};

/* The DSN parameters of RCPT; each may be given once. */
enum { SMTPD_RCPT_NOTIFY, SMTPD_RCPT_ORCPT };
static const char *const smtpd_rcpt_ext_names[] = {"NOTIFY", "ORCPT"};

/*
 * smtpd_session_rcpt_param - one RCPT parameter into rp: NOTIFY= and
 * ORCPT= (RFC 3461 4.1, 4.2), only when the transaction took DSN at MAIL.
 * SMTPD_REPLY_COUNT when taken; otherwise the reply, with *name its
 * argument.
 */
static enum smtpd_reply_id smtpd_session_rcpt_param(const struct smtpd_session *s,
                                                    const char *key,
                                                    const char *value,
                                                    struct smtpd_rcpt_params *rp,
                                                    const char **name)
{
    size_t i =
        smtpd_session_param_index(key, smtpd_rcpt_ext_names, HAMR_ARRAY_LEN(smtpd_rcpt_ext_names));

    *name = key;
    if (i == HAMR_ARRAY_LEN(smtpd_rcpt_ext_names) || !s->tx->ext)
        return SMTPD_REPLY_PARAM_UNKNOWN;
    *name = smtpd_rcpt_ext_names[i];
    if (rp->seen & (1u << i))
        return SMTPD_REPLY_PARAM_TWICE;
    rp->seen |= 1u << i;
    if (i == SMTPD_RCPT_NOTIFY) {
        if (!smtp_notify_parse(value, &rp->notify))
            return SMTPD_REPLY_PARAM_SYNTAX;
    } else {
        if (!smtp_orcpt_parse(value, rp->orcpt))
            return SMTPD_REPLY_PARAM_SYNTAX;
        rp->has_orcpt = true;
    }
    return SMTPD_REPLY_COUNT;
}

/*
 * smtpd_session_rcpt_params - RCPT's parameters after the path at p into
 * rp. false when one was refused (the reply has gone out).
 */
static bool smtpd_session_rcpt_params(struct smtpd_session *s,
                                      const char *p,
                                      struct smtpd_rcpt_params *rp)
{
    /* ORCPT's value is xtext: up to three octets for each of its own. */
    char key[32], value[SMTP_XTEXT_MAX(SMTP_ORCPT_MAX) + 1];
    bool bad;

    while ((p = smtpd_session_next_param(p, s->tx->smtputf8, key, sizeof(key), value, sizeof(value),
                                         &bad))) {
        const char *name;
        if (bad) {
            smtpd_session_reply(s, SMTPD_REPLY_RCPT_SYNTAX, NULL);
            return false;
        }
        enum smtpd_reply_id r = smtpd_session_rcpt_param(s, key, value, rp, &name);
        if (r != SMTPD_REPLY_COUNT) {
            smtpd_session_reply(s, r, name);
            return false;
        }
    }
    return true;
}

/*
 * smtpd_session_show_path - "<addr>" for a reply: printable ASCII only
 * (a UTF-8 address shows '?' for each octet it has above 0x7f).
 */
static const char *smtpd_session_show_path(char *out, size_t outlen, const char *addr)
{
    char shown[SMTP_ADDR_PATH_MAX + 1];
    log_printable(shown, sizeof(shown), addr, strlen(addr));
    snprintf(out, outlen, "<%s>", shown);
    return out;
}

/* smtpd_session_proceed_rcpt - parse, limit, relay control, remember (RFC 5321 4.1.1.3). */
static void smtpd_session_proceed_rcpt(struct smtpd_session *s, const char *arg)
{
    struct smtp_addr a;
    struct smtpd_rcpt_params rp = {0};
    const char *p = smtpd_session_parse_keyword(arg, "TO:");
    char shown[SMTP_ADDR_PATH_MAX + 3];

    if (p == NULL) {
        smtpd_session_reply(s, SMTPD_REPLY_RCPT_SYNTAX, NULL);
        return;
    }
    enum smtpd_reply_id bad_path = smtpd_session_parse_path(
        &p, &a, SMTP_ADDR_POSTMASTER_OK | (s->tx->smtputf8 ? SMTP_ADDR_UTF8_OK : 0),
        SMTPD_REPLY_RCPT_SYNTAX);
    if (bad_path != SMTPD_REPLY_COUNT) {
        smtpd_session_reply(s, bad_path, NULL);
        return;
    }
    if (!smtpd_session_rcpt_params(s, p, &rp))
        return;
    struct smtp_dsn_rcpt dsn = {.notify = rp.notify, .orcpt = rp.has_orcpt ? rp.orcpt : NULL};
    /* RFC 5321 4.5.3.1.10: "452 too many recipients" past the limit. */
    if (s->tx->n_rcpts >= s->policy->recipient_limit) {
        smtpd_session_reply(s, SMTPD_REPLY_TOO_MANY_RCPTS, NULL);
        return;
    }
    if (!a.has_domain) {
        /* <postmaster> (RFC 5321 4.5.1): from anyone, to the configured mailbox. */
        char to[SMTPD_POSTMASTER_MAX + sizeof("postmaster@") + sizeof(s->policy->hostname)];
        if (s->policy->postmaster[0] != '\0')
            hamr_strlcpy(to, s->policy->postmaster, sizeof(to));
        else
            snprintf(to, sizeof(to), "postmaster@%s", s->policy->hostname);
        if (smtpd_tx_add_rcpt(s->tx, to, &dsn) != 0) {
            smtpd_session_reply(s, SMTPD_REPLY_LOCAL_ERROR, NULL);
            return;
        }
        smtpd_session_enter_state(s, SMTPD_STATE_RCPT);
        smtpd_session_reply(s, SMTPD_REPLY_RCPT_OK, NULL);
        return;
    }
    if (!smtpd_session_relay_ok(s, &a)) {
        smtpd_session_reply(s, SMTPD_REPLY_RELAY_DENIED,
                            smtpd_session_show_path(shown, sizeof(shown), a.text));
        return;
    }
    if (!smtpd_session_rcpt_known(s, &a)) {
        smtpd_session_reply(s, SMTPD_REPLY_RCPT_UNKNOWN,
                            smtpd_session_show_path(shown, sizeof(shown), a.text));
        return;
    }
    if (smtpd_tx_add_rcpt(s->tx, a.text, &dsn) != 0) {
        smtpd_session_reply(s, SMTPD_REPLY_LOCAL_ERROR, NULL);
        return;
    }
    smtpd_session_enter_state(s, SMTPD_STATE_RCPT);
    smtpd_session_reply(s, SMTPD_REPLY_RCPT_OK, NULL);
}

/* smtpd_session_check_data - DATA needs an accepted recipient. */
static int smtpd_session_check_data(struct smtpd_session *s, const char *arg)
{
    if (smtpd_session_need_helo(s) != 0)
        return -1;
    if (s->state == SMTPD_STATE_READY) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_ORDER, "need MAIL command");
        return -1;
    }
    if (s->state != SMTPD_STATE_RCPT) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_ORDER, "need RCPT command");
        return -1;
    }
    /* RFC 3030 2: DATA and BDAT do not mix in one transaction. */
    if (s->tx->bdat) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_ORDER, "BDAT in progress");
        return -1;
    }
    return 0;
}

/* smtpd_session_rfc5322_date - "Mon, 2 Jan 2006 15:04:05 +0000" (RFC 5322 3.3), UTC. */
static void smtpd_session_rfc5322_date(char *out, size_t outlen)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    snprintf(out, outlen, "%s, %d %s %d %02d:%02d:%02d +0000", days[tm.tm_wday % 7], tm.tm_mday,
             months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/*
 * smtpd_session_protocol - the Received: "with" keyword (RFC 3848; RFC
 * 6531 4.3 for a message sent with SMTPUTF8).
 */
static const char *smtpd_session_protocol(const struct smtpd_session *s)
{
    if (!s->esmtp)
        return "SMTP";
    if (s->tx != NULL && s->tx->smtputf8) {
        if (s->authenticated)
            return s->tls ? "UTF8SMTPSA" : "UTF8SMTPA";
        return s->tls ? "UTF8SMTPS" : "UTF8SMTP";
    }
    if (s->authenticated)
        return s->tls ? "ESMTPSA" : "ESMTPA";
    return s->tls ? "ESMTPS" : "ESMTP";
}

/*
 * smtpd_session_add_received - our trace header first in the body (RFC 5321
 * 4.4), CRLF line ends, folded lines start with a TAB. "for" only with
 * exactly one recipient, so the header reveals no other recipients.
 */
static int smtpd_session_add_received(struct smtpd_session *s)
{
    struct smtpd_tx *tx = s->tx;
    char date[64], forclause[SMTP_ADDR_PATH_MAX + 16];
    char hdr[1024];
    int n;

    smtpd_session_rfc5322_date(date, sizeof(date));
    if (tx->n_rcpts == 1)
        snprintf(forclause, sizeof(forclause), "\r\n\tfor <%s>; ", tx->rcpts[0]);
    else
        snprintf(forclause, sizeof(forclause), ";\r\n\t");
    n = snprintf(hdr, sizeof(hdr), "Received: from %s (%s)\r\n\tby %s (hamr) with %s id %s%s%s\r\n",
                 s->helo, s->client_addr, s->policy->hostname, smtpd_session_protocol(s),
                 tx->queue_id, forclause, date);
    if (n < 0)
        return HAMR_EINVAL;
    if ((size_t)n >= sizeof(hdr)) {
        /* Only a huge helo gets here; cut it, the header still ends in CRLF. */
        n = (int)sizeof(hdr) - 1;
        hdr[n - 2] = '\r';
        hdr[n - 1] = '\n';
    }
    return buf_append(&tx->body, hdr, (size_t)n);
}

/*
 * smtpd_session_open_message - the queue id and our Received: (at DATA or
 * the first BDAT chunk). SMTPD_REPLY_COUNT on success; otherwise the reply
 * owed, with *arg its argument (or NULL).
 */
static enum smtpd_reply_id smtpd_session_open_message(struct smtpd_session *s, const char **arg)
{
    struct smtpd_tx *tx = s->tx;
    int rc = s->sink.new_id(s->sink.data, tx->queue_id, sizeof(tx->queue_id));

    *arg = NULL;
    if (rc != 0 || tx->queue_id[0] == '\0') {
        *arg = s->policy->hostname;
        return smtpd_reply_for_error(rc ? rc : HAMR_EINVAL);
    }
    tx->queue_id[sizeof(tx->queue_id) - 1] = '\0';
    log_printable(tx->queue_id, sizeof(tx->queue_id), tx->queue_id, strlen(tx->queue_id));
    if (smtpd_session_add_received(s) != 0)
        return SMTPD_REPLY_LOCAL_ERROR;
    return SMTPD_REPLY_COUNT;
}

/* smtpd_session_proceed_data - queue id, Received:, 354, DATA mode (RFC 5321 4.1.1.4). */
static void smtpd_session_proceed_data(struct smtpd_session *s, const char *arg)
{
    struct smtpd_tx *tx = s->tx;

    /* RFC 2920 3.1 / SECURITY.md S5: nothing may follow DATA before our 354. */
    if (s->input_off < s->input.len) {
        smtpd_session_tx_reset(s);
        smtpd_session_reply(s, SMTPD_REPLY_DESYNC, NULL);
        return;
    }
    const char *reject_arg;
    enum smtpd_reply_id reject = smtpd_session_open_message(s, &reject_arg);
    if (reject != SMTPD_REPLY_COUNT) {
        smtpd_session_reply(s, reject, reject_arg);
        return;
    }
    smtpd_reader_start_data(&s->reader, &tx->body, s->policy->message_size_limit,
                            s->policy->header_size_limit);
    s->data_start_ms = smtpd_session_now(s);
    s->data_octets = 0;
    smtpd_session_enter_state(s, SMTPD_STATE_DATA);
    smtpd_session_reply(s, SMTPD_REPLY_DATA_GO, NULL);
}

/*
 * The longest chunk-size we take: UINT64_MAX has 20 digits. So a BDAT line
 * we read is at most 30 octets ("BDAT " 20 digits " LAST"); any longer one
 * the reader passes (up to SMTPD_READER_LINE_MAX) fails the parse and gets
 * 501 and close, as one the reader refuses does (SECURITY.md S22).
 */
#define SMTPD_SESSION_BDAT_DIGITS 20
#define SMTPD_SESSION_BDAT_SYNTAX "501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"

/*
 * smtpd_session_junk - one more command that moves no mail along: past
 * junk_command_limit of them in a session each counts toward max_errors
 * (Postfix's smtpd_junk_command_limit), so that a client cannot keep a
 * session busy with them forever. The count starts again after each
 * message accepted, so a client that sends RSET between messages is never
 * counted. true: it counts.
 */
static bool smtpd_session_junk(struct smtpd_session *s)
{
    unsigned limit =
        s->policy->junk_command_limit ? s->policy->junk_command_limit : SMTPD_SESSION_JUNK_LIMIT;
    if (s->junk < UINT_MAX)
        s->junk++;
    return s->junk > limit;
}

/* smtpd_session_reply_junk - the reply of a junk command, an error past the limit. */
static void smtpd_session_reply_junk(struct smtpd_session *s, enum smtpd_reply_id id)
{
    if (!smtpd_session_junk(s)) {
        smtpd_session_reply(s, id, NULL);
        return;
    }
    char line[SMTPD_REPLY_LINE_MAX];
    size_t n = smtpd_reply_format(id, NULL, line, sizeof(line));
    smtpd_session_reply_raw(s, smtpd_reply_get(id)->code, true, false, line, n);
}

/*
 * smtpd_session_parse_bdat - "chunk-size [SP LAST]" (RFC 3030 4):
 * chunk-size is 1*DIGIT, here at most 20 digits and within uint64_t; one
 * space before LAST (any case), nothing else, no sign, no other spaces.
 */
static bool smtpd_session_parse_bdat(const char *arg, uint64_t *size, bool *last)
{
    const char *p = arg;
    uint64_t n = 0;
    size_t digits = 0;

    while (*p >= '0' && *p <= '9') {
        uint64_t d = (uint64_t)(*p - '0');
        if (++digits > SMTPD_SESSION_BDAT_DIGITS || n > (UINT64_MAX - d) / 10)
            return false;
        n = n * 10 + d;
        p++;
    }
    if (digits == 0)
        return false;
    *last = false;
    if (*p == ' ' && hamr_strncaseeq(p + 1, "LAST", 5)) {
        *last = true;
        p += 5;
    }
    if (*p != '\0')
        return false;
    *size = n;
    return true;
}

/*
 * smtpd_session_bdat_syntax - a BDAT line we cannot read: where its chunk
 * ends is unknown, and its octets must never be taken as commands
 * (SECURITY.md S22). 501 5.5.4 and close.
 */
static void smtpd_session_bdat_syntax(struct smtpd_session *s)
{
    hamr_strlcpy(s->verb, "BDAT", sizeof(s->verb));
    smtpd_session_reply_raw(s, 501, true, true, SMTPD_SESSION_BDAT_SYNTAX,
                            strlen(SMTPD_SESSION_BDAT_SYNTAX));
}

static void smtpd_session_data_end(struct smtpd_session *s);

/*
 * smtpd_session_bdat_chunk_end - the chunk's last octet was read: the
 * reply owed for it. A non-LAST chunk of a good transaction: 250 with its
 * size. LAST: the message goes through the checks of DATA and to the sink.
 */
static void smtpd_session_bdat_chunk_end(struct smtpd_session *s)
{
    hamr_strlcpy(s->verb, "BDAT", sizeof(s->verb));
    smtpd_session_enter_state(s, s->bdat_back);
    if (s->bdat_reject != SMTPD_REPLY_COUNT) {
        if (s->bdat_drop_tx) {
            smtpd_session_tx_reset(s);
            smtpd_session_enter_state(s, SMTPD_STATE_READY);
        }
        smtpd_session_reply(s, s->bdat_reject,
                            s->bdat_reject_arg[0] != '\0' ? s->bdat_reject_arg : NULL);
        return;
    }
    if (!s->bdat_last) {
        char line[SMTPD_REPLY_LINE_MAX];
        int n =
            snprintf(line, sizeof(line), "250 2.0.0 %" PRIu64 " octets received\r\n", s->bdat_size);
        HAMR_ASSERT(n > 0 && (size_t)n < sizeof(line));
        /* An empty chunk that is not the last moves nothing: junk, as NOOP. */
        bool junk = s->bdat_size == 0 && smtpd_session_junk(s);
        smtpd_session_reply_raw(s, 250, junk, false, line, (size_t)n);
        return;
    }
    smtpd_reader_end_bdat(&s->reader);
    smtpd_session_data_end(s);
}

/*
 * smtpd_session_proceed_bdat - "BDAT n [LAST]" (RFC 3030). The n octets
 * after the command line are read whatever the answer will be (RFC 3030 2:
 * the server consumes the chunk before it replies; else they would be read
 * as commands): into the message after MAIL and RCPT, dropped otherwise
 * (503 5.5.1 after them). The first chunk opens the message as DATA does
 * (queue id, Received:). A chunk is read under data_timeout and
 * min_data_rate, each chunk with its own deadline.
 */
static void smtpd_session_proceed_bdat(struct smtpd_session *s, const char *arg)
{
    uint64_t size;
    bool last;

    if (!smtpd_session_parse_bdat(arg, &size, &last)) {
        smtpd_session_bdat_syntax(s);
        return;
    }
    s->bdat_size = size;
    s->bdat_last = last;
    s->bdat_back = s->state;
    s->bdat_reject = SMTPD_REPLY_COUNT;
    s->bdat_reject_arg[0] = '\0';
    s->bdat_drop_tx = false;
    const char *reject_arg = NULL;
    if (s->state == SMTPD_STATE_GREETED) {
        s->bdat_reject = SMTPD_REPLY_BAD_ORDER;
        reject_arg = "send HELO/EHLO first";
    } else if (s->tx == NULL) {
        s->bdat_reject = SMTPD_REPLY_BAD_ORDER;
        reject_arg = "need MAIL command";
    } else if (s->state != SMTPD_STATE_RCPT) {
        s->bdat_reject = SMTPD_REPLY_BAD_ORDER;
        reject_arg = "need RCPT command";
    } else if (!s->tx->bdat) {
        s->bdat_reject = smtpd_session_open_message(s, &reject_arg);
        /* Later chunks must not make a message without this one's octets. */
        s->bdat_drop_tx = s->bdat_reject != SMTPD_REPLY_COUNT;
        if (s->bdat_reject == SMTPD_REPLY_COUNT) {
            s->tx->bdat = true;
            smtpd_reader_start_bdat(&s->reader, &s->tx->body, s->policy->message_size_limit,
                                    s->policy->header_size_limit);
        }
    }
    if (reject_arg != NULL)
        hamr_strlcpy(s->bdat_reject_arg, reject_arg, sizeof(s->bdat_reject_arg));
    smtpd_reader_start_chunk(&s->reader, size, s->bdat_reject == SMTPD_REPLY_COUNT);
    s->data_start_ms = smtpd_session_now(s);
    s->data_octets = 0;
    if (size == 0) {
        smtpd_session_bdat_chunk_end(s);
        return;
    }
    smtpd_session_enter_state(s, SMTPD_STATE_BDAT);
}

/* smtpd_session_proceed_rset - drop the transaction (RFC 5321 4.1.1.5). */
static void smtpd_session_proceed_rset(struct smtpd_session *s, const char *arg)
{
    smtpd_session_tx_reset(s);
    if (s->state != SMTPD_STATE_GREETED)
        smtpd_session_enter_state(s, SMTPD_STATE_READY);
    smtpd_session_reply_junk(s, SMTPD_REPLY_OK);
}

/* smtpd_session_proceed_noop - 250 (RFC 5321 4.1.1.9). */
static void smtpd_session_proceed_noop(struct smtpd_session *s, const char *arg)
{
    smtpd_session_reply_junk(s, SMTPD_REPLY_OK);
}

/* smtpd_session_proceed_quit - 221 and close (RFC 5321 4.1.1.10). */
static void smtpd_session_proceed_quit(struct smtpd_session *s, const char *arg)
{
    smtpd_session_reply(s, SMTPD_REPLY_BYE, NULL);
}

/* smtpd_session_proceed_vrfy - 252: we do not verify (RFC 5321 3.5.3). */
static void smtpd_session_proceed_vrfy(struct smtpd_session *s, const char *arg)
{
    smtpd_session_reply_junk(s, SMTPD_REPLY_VRFY);
}

/* smtpd_session_proceed_help - 214. */
static void smtpd_session_proceed_help(struct smtpd_session *s, const char *arg)
{
    smtpd_session_reply_junk(s, SMTPD_REPLY_HELP);
}

/* STARTTLS replies (RFC 3207, SECURITY.md S4); not in the shared table. */
#define SMTPD_SESSION_TLS_READY "220 2.0.0 Ready to start TLS\r\n"
#define SMTPD_SESSION_TLS_ACTIVE "554 5.5.1 Error: TLS already active\r\n"
#define SMTPD_SESSION_TLS_NOT_OFFERED "502 5.5.1 Error: command not implemented\r\n"

/* smtpd_session_check_starttls - offered, not yet active, no argument, no transaction. */
static int smtpd_session_check_starttls(struct smtpd_session *s, const char *arg)
{
    if (s->io.starttls == NULL) {
        smtpd_session_reply_raw(s, 502, true, false, SMTPD_SESSION_TLS_NOT_OFFERED,
                                strlen(SMTPD_SESSION_TLS_NOT_OFFERED));
        return -1;
    }
    if (s->tls) {
        smtpd_session_reply_raw(s, 554, true, false, SMTPD_SESSION_TLS_ACTIVE,
                                strlen(SMTPD_SESSION_TLS_ACTIVE));
        return -1;
    }
    if (arg[strspn(arg, " ")] != '\0') {
        smtpd_session_reply(s, SMTPD_REPLY_NO_ARGS, "STARTTLS");
        return -1;
    }
    if (s->tx != NULL) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_ORDER, "MAIL transaction in progress");
        return -1;
    }
    return 0;
}

/*
 * smtpd_session_proceed_starttls - 220, then forget everything (RFC 3207
 * 4.2): the plaintext already read behind the command is thrown away
 * unprocessed, so a command injected before the handshake never runs
 * inside TLS (CVE-2011-0411, SECURITY.md S4); HELO/EHLO must come again.
 */
static void smtpd_session_proceed_starttls(struct smtpd_session *s, const char *arg)
{
    smtpd_session_reply_raw(s, 220, false, false, SMTPD_SESSION_TLS_READY,
                            strlen(SMTPD_SESSION_TLS_READY));
    if (s->closed || s->io_detached)
        return;
    size_t dropped = s->input.len - s->input_off;
    s->input_off = s->input.len;
    if (dropped > 0)
        log_warn("smtpd session=%" PRIu64
                 " client=%s discarded=%zu plaintext octets after "
                 "STARTTLS",
                 s->id, s->client_addr, dropped);
    smtpd_reader_init(&s->reader);
    smtpd_session_tx_reset(s);
    s->helo[0] = '\0';
    s->esmtp = false;
    s->authenticated = false; /* never set before TLS; kept safe all the same */
    s->tls = true;
    smtpd_session_enter_state(s, SMTPD_STATE_GREETED);
    if (s->io.starttls(s->io.data) != 0) {
        log_warn("smtpd session=%" PRIu64 " client=%s starttls failed", s->id, s->client_addr);
        smtpd_session_hangup(s);
    }
}

/* AUTH replies (RFC 4954, SECURITY.md S16); not in the shared table. */
#define SMTPD_SESSION_AUTH_OK "235 2.7.0 Authentication successful\r\n"
#define SMTPD_SESSION_AUTH_FAILED "535 5.7.8 Error: authentication failed\r\n"
#define SMTPD_SESSION_AUTH_NEED_TLS "530 5.7.0 Must issue a STARTTLS command first\r\n"
#define SMTPD_SESSION_AUTH_ABORTED "501 5.7.0 Authentication aborted\r\n"
#define SMTPD_SESSION_AUTH_BAD_BASE64 "501 5.5.2 Error: invalid base64 data\r\n"
#define SMTPD_SESSION_AUTH_TOO_LONG "500 5.5.6 Authentication Exchange line is too long\r\n"
#define SMTPD_SESSION_AUTH_BAD_MECH "504 5.5.4 Unrecognized authentication type\r\n"
#define SMTPD_SESSION_AUTH_TEMPFAIL "454 4.7.0 Temporary authentication failure\r\n"
#define SMTPD_SESSION_AUTH_RATE "450 4.7.1 Error: too many AUTH commands from %s\r\n"
#define SMTPD_SESSION_AUTH_PLAIN_GO "334 \r\n"
#define SMTPD_SESSION_AUTH_LOGIN_USER "334 VXNlcm5hbWU6\r\n" /* "Username:" */
#define SMTPD_SESSION_AUTH_LOGIN_PASS "334 UGFzc3dvcmQ6\r\n" /* "Password:" */

/* smtpd_session_auth_reply - one fixed AUTH reply through the one writer. */
static void smtpd_session_auth_reply(struct smtpd_session *s, int code, const char *text)
{
    smtpd_session_reply_raw(s, code, code >= 500, false, text, strlen(text));
}

/* smtpd_session_check_auth - configured, after EHLO, inside TLS, once, outside a transaction. */
static int smtpd_session_check_auth(struct smtpd_session *s, const char *arg)
{
    if (s->policy->auth == NULL) {
        smtpd_session_auth_reply(s, 502, SMTPD_SESSION_TLS_NOT_OFFERED);
        return -1;
    }
    if (smtpd_session_need_helo(s) != 0)
        return -1;
    if (!s->tls) {
        smtpd_session_auth_reply(s, 530, SMTPD_SESSION_AUTH_NEED_TLS);
        return -1;
    }
    if (!s->esmtp) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_ORDER, "send EHLO first");
        return -1;
    }
    if (s->authenticated) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_ORDER, "already authenticated");
        return -1;
    }
    if (s->tx != NULL) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_ORDER, "MAIL transaction in progress");
        return -1;
    }
    return 0;
}

/*
 * smtpd_session_auth_fail - 535, counted as an error; at auth_max_failures
 * 421 4.7.0 and close. user is printable text for the log.
 */
static void smtpd_session_auth_fail(struct smtpd_session *s, const char *user)
{
    unsigned max =
        s->policy->auth_max_failures ? s->policy->auth_max_failures : SMTPD_SESSION_AUTH_FAILURES;

    s->auth_failures++;
    log_info("smtpd session=%" PRIu64 " auth failed client=%s user=%s failures=%u", s->id,
             s->client_addr, user, s->auth_failures);
    smtpd_session_auth_reply(s, 535, SMTPD_SESSION_AUTH_FAILED);
    if (s->auth_failures >= max && !s->closed) {
        char line[SMTPD_REPLY_LINE_MAX];
        int n =
            snprintf(line, sizeof(line), "421 4.7.0 %s Error: too many failed authentications\r\n",
                     s->policy->hostname);
        HAMR_ASSERT(n > 0 && (size_t)n < sizeof(line));
        smtpd_session_reply_raw(s, 421, false, true, line, (size_t)n);
    }
}

/*
 * smtpd_session_auth_result - the answer of a check: 235 or a failure.
 * s->auth_user and s->auth_shown name the user tried.
 */
static void smtpd_session_auth_result(struct smtpd_session *s, int rc)
{
    if (rc != 0) {
        s->auth_user[0] = '\0';
        smtpd_session_auth_fail(s, s->auth_shown);
        return;
    }
    s->authenticated = true;
    log_info("smtpd session=%" PRIu64 " auth ok client=%s user=%s", s->id, s->client_addr,
             s->auth_shown);
    smtpd_session_auth_reply(s, 235, SMTPD_SESSION_AUTH_OK);
}

/*
 * smtpd_session_auth_done - io.auth_check called back: reply, then go on
 * with held input. A detached session frees itself.
 */
static void smtpd_session_auth_done(void *arg, int rc)
{
    struct smtpd_session *s = arg;

    HAMR_ASSERT(s->auth_pending);
    s->auth_pending = false;
    if (s->io_detached) {
        log_info("smtpd session=%" PRIu64 " auth check ended client=gone", s->id);
        smtpd_session_free_now(s);
        return;
    }
    hamr_strlcpy(s->verb, "AUTH", sizeof(s->verb));
    smtpd_session_auth_result(s, rc);
    if (s->close_after_commit) {
        s->verb[0] = '\0';
        smtpd_session_reply(s, SMTPD_REPLY_SHUTDOWN, s->policy->hostname);
    }
    smtpd_session_process(s);
    smtpd_session_arm_timer(s);
}

/*
 * smtpd_session_auth_check - the password check itself: through
 * io.auth_check (the answer comes in smtpd_session_auth_done) or, without
 * it, right here.
 */
static void smtpd_session_auth_check(struct smtpd_session *s,
                                     const uint8_t *user,
                                     size_t user_len,
                                     const uint8_t *pass,
                                     size_t pass_len)
{
    log_printable(s->auth_shown, sizeof(s->auth_shown), (const char *)user, user_len);
    log_printable(s->auth_user, sizeof(s->auth_user), (const char *)user, user_len);
    if (s->io.auth_check == NULL) {
        smtpd_session_auth_result(s, smtpd_auth_verify(s->policy->auth, (const char *)user,
                                                       user_len, (const char *)pass, pass_len));
        return;
    }
    s->auth_pending = true;
    int rc = s->io.auth_check(s->io.data, s->policy->auth, (const char *)user, user_len,
                              (const char *)pass, pass_len, smtpd_session_auth_done, s);
    if (rc != 0) {
        /* The callback will not run. */
        s->auth_pending = false;
        s->auth_user[0] = '\0';
        log_warn("smtpd session=%" PRIu64 " auth check not queued client=%s user=%s err=%s", s->id,
                 s->client_addr, s->auth_shown, hamr_errname(rc));
        smtpd_session_auth_reply(s, 454, SMTPD_SESSION_AUTH_TEMPFAIL);
        return;
    }
    smtpd_session_update_reading(s);
    smtpd_session_arm_timer(s);
    /* Asynchronous processing continues in smtpd_session_auth_done(). */
}

/*
 * smtpd_session_auth_plain - RFC 4616: [authzid] NUL authcid NUL passwd.
 * Exactly two NULs, authcid and passwd not empty, and an authzid only if
 * it names the authcid itself (we act for no one else).
 */
static void smtpd_session_auth_plain(struct smtpd_session *s, const uint8_t *msg, size_t len)
{
    const uint8_t *nul1 = memchr(msg, '\0', len);
    if (nul1 == NULL) {
        smtpd_session_auth_fail(s, "-");
        return;
    }
    const uint8_t *authcid = nul1 + 1;
    const uint8_t *nul2 = memchr(authcid, '\0', len - (size_t)(authcid - msg));
    if (nul2 == NULL) {
        smtpd_session_auth_fail(s, "-");
        return;
    }
    size_t authzid_len = (size_t)(nul1 - msg);
    size_t authcid_len = (size_t)(nul2 - authcid);
    const uint8_t *pass = nul2 + 1;
    size_t pass_len = len - (size_t)(pass - msg);
    if (authcid_len == 0 || pass_len == 0 || memchr(pass, '\0', pass_len) != NULL ||
        (authzid_len != 0 &&
         (authzid_len != authcid_len || memcmp(msg, authcid, authcid_len) != 0))) {
        char shown[SMTPD_SESSION_LOG_TEXT + 1];
        log_printable(shown, sizeof(shown), (const char *)authcid, authcid_len);
        smtpd_session_auth_fail(s, authcid_len ? shown : "-");
        return;
    }
    smtpd_session_auth_check(s, authcid, authcid_len, pass, pass_len);
}

/*
 * smtpd_session_auth_response - one client response (text: base64, no
 * CRLF) for the exchange step: "*" cancels, "=" is empty (RFC 4954 4).
 */
static void smtpd_session_auth_response(struct smtpd_session *s,
                                        enum smtpd_auth_step step,
                                        const char *text,
                                        size_t len)
{
    uint8_t msg[SMTPD_SESSION_AUTH_LINE_MAX / 4 * 3 + 3];
    size_t n = 0;

    s->auth_step = SMTPD_AUTH_STEP_NONE;
    if (len == 1 && text[0] == '*') {
        log_info("smtpd session=%" PRIu64 " auth aborted client=%s", s->id, s->client_addr);
        smtpd_session_auth_reply(s, 501, SMTPD_SESSION_AUTH_ABORTED);
        return;
    }
    if (!(len == 1 && text[0] == '=') &&
        smtpd_auth_b64_decode(text, len, msg, sizeof(msg), &n) != 0) {
        smtpd_session_auth_reply(s, 501, SMTPD_SESSION_AUTH_BAD_BASE64);
        return;
    }
    switch (step) {
        case SMTPD_AUTH_STEP_PLAIN:
            smtpd_session_auth_plain(s, msg, n);
            break;
        case SMTPD_AUTH_STEP_LOGIN_USER:
            if (n == 0 || n > SMTPD_AUTH_USER_MAX || memchr(msg, '\0', n) != NULL) {
                smtpd_session_auth_fail(s, "-");
                break;
            }
            memcpy(s->login_user, msg, n);
            s->login_user_len = n;
            s->auth_step = SMTPD_AUTH_STEP_LOGIN_PASS;
            smtpd_session_reply_raw(s, 334, false, false, SMTPD_SESSION_AUTH_LOGIN_PASS,
                                    strlen(SMTPD_SESSION_AUTH_LOGIN_PASS));
            break;
        case SMTPD_AUTH_STEP_LOGIN_PASS:
            smtpd_session_auth_check(s, (const uint8_t *)s->login_user, s->login_user_len, msg, n);
            OPENSSL_cleanse(s->login_user, sizeof(s->login_user));
            s->login_user_len = 0;
            break;
        case SMTPD_AUTH_STEP_NONE:
            HAMR_ASSERT(0);
    }
    OPENSSL_cleanse(msg, n);
}

/*
 * smtpd_session_auth_feed - collect one response line from in[0..len)
 * (the command reader is bypassed: a response may be 12288 octets, RFC
 * 4954 4). Returns the octets used; handles the line once its LF came.
 */
static size_t smtpd_session_auth_feed(struct smtpd_session *s, const uint8_t *in, size_t len)
{
    const uint8_t *lf = memchr(in, '\n', len);
    size_t used = lf != NULL ? (size_t)(lf - in) + 1 : len;
    size_t keep = lf != NULL ? used - 1 : used;

    if (!s->auth_line_too_long && buf_append(&s->auth_line, in, keep) != 0)
        s->auth_line_too_long = true; /* keep reading to the LF, storing nothing */
    if (lf == NULL)
        return used;
    enum smtpd_auth_step step = s->auth_step;
    bool too_long = s->auth_line_too_long;
    const char *text = (const char *)s->auth_line.data;
    size_t n = s->auth_line.len;
    bool crlf = n > 0 && text[n - 1] == '\r';

    s->auth_step = SMTPD_AUTH_STEP_NONE;
    s->auth_line_too_long = false;
    if (too_long)
        smtpd_session_auth_reply(s, 500, SMTPD_SESSION_AUTH_TOO_LONG);
    else if (!crlf)
        smtpd_session_reply(s, SMTPD_REPLY_CMD_BARE_LF, NULL);
    else
        smtpd_session_auth_response(s, step, text, n - 1);
    if (s->auth_line.data != NULL)
        OPENSSL_cleanse(s->auth_line.data, s->auth_line.len);
    buf_reset(&s->auth_line);
    return used;
}

/*
 * smtpd_session_auth_rate_ok - count this AUTH command against the client's
 * rate; over it, 450 4.7.1 (an error, as in Postfix) and false.
 */
static bool smtpd_session_auth_rate_ok(struct smtpd_session *s)
{
    if (s->io.auth_rate == NULL || s->io.auth_rate(s->io.data) == 0)
        return true;
    char line[SMTPD_REPLY_LINE_MAX];
    int n = snprintf(line, sizeof(line), SMTPD_SESSION_AUTH_RATE, s->client_addr);
    HAMR_ASSERT(n > 0 && (size_t)n < sizeof(line));
    log_info("smtpd session=%" PRIu64 " auth refused client=%s reason=rate", s->id, s->client_addr);
    smtpd_session_reply_raw(s, 450, true, false, line, (size_t)n);
    return false;
}

/* smtpd_session_proceed_auth - "AUTH mechanism [initial-response]" (RFC 4954 4). */
static void smtpd_session_proceed_auth(struct smtpd_session *s, const char *arg)
{
    const char *mech = arg + strspn(arg, " ");
    size_t mech_len = strcspn(mech, " ");
    const char *initial = mech + mech_len;

    initial += strspn(initial, " ");
    size_t initial_len = strlen(initial);
    if (!smtpd_session_auth_rate_ok(s)) {
        /* No exchange, no password check: a flood costs no PBKDF2 work. */
    } else if (mech_len == 5 && hamr_strncaseeq(mech, "PLAIN", 5)) {
        if (initial_len > 0) {
            smtpd_session_auth_response(s, SMTPD_AUTH_STEP_PLAIN, initial, initial_len);
        } else {
            s->auth_step = SMTPD_AUTH_STEP_PLAIN;
            smtpd_session_reply_raw(s, 334, false, false, SMTPD_SESSION_AUTH_PLAIN_GO,
                                    strlen(SMTPD_SESSION_AUTH_PLAIN_GO));
        }
    } else if (mech_len == 5 && hamr_strncaseeq(mech, "LOGIN", 5)) {
        if (initial_len > 0) {
            smtpd_session_auth_response(s, SMTPD_AUTH_STEP_LOGIN_USER, initial, initial_len);
        } else {
            s->auth_step = SMTPD_AUTH_STEP_LOGIN_USER;
            smtpd_session_reply_raw(s, 334, false, false, SMTPD_SESSION_AUTH_LOGIN_USER,
                                    strlen(SMTPD_SESSION_AUTH_LOGIN_USER));
        }
    } else {
        smtpd_session_auth_reply(s, 504, SMTPD_SESSION_AUTH_BAD_MECH);
    }
    /* arg lies in the session's own reader line: wipe the initial response. */
    OPENSSL_cleanse((char *)initial, initial_len);
}

static const struct smtpd_cmd smtpd_session_cmds[] = {
    {"STARTTLS", 0, smtpd_session_check_starttls, smtpd_session_proceed_starttls},
    {"EHLO", 0, smtpd_session_check_helo, smtpd_session_proceed_helo},
    {"HELO", 0, smtpd_session_check_helo, smtpd_session_proceed_helo},
    {"MAIL", SMTPD_CMD_NEED_ARG, smtpd_session_check_mail, smtpd_session_proceed_mail},
    {"RCPT", SMTPD_CMD_NEED_ARG, smtpd_session_check_rcpt, smtpd_session_proceed_rcpt},
    {"DATA", SMTPD_CMD_NO_ARG | SMTPD_CMD_SYNC, smtpd_session_check_data,
     smtpd_session_proceed_data},
    /* BDAT is not here: smtpd_session_command hands it to proceed_bdat first. */
    {"RSET", SMTPD_CMD_NO_ARG, smtpd_session_check_none, smtpd_session_proceed_rset},
    {"NOOP", 0, smtpd_session_check_none, smtpd_session_proceed_noop},
    {"QUIT", SMTPD_CMD_NO_ARG, smtpd_session_check_none, smtpd_session_proceed_quit},
    {"VRFY", SMTPD_CMD_NEED_ARG, smtpd_session_check_none, smtpd_session_proceed_vrfy},
    {"HELP", 0, smtpd_session_check_none, smtpd_session_proceed_help},
    {"AUTH", SMTPD_CMD_NEED_ARG, smtpd_session_check_auth, smtpd_session_proceed_auth},
};

/* smtpd_session_forbidden - HTTP and header lines (Postfix smtpd_forbidden_commands). */
static bool smtpd_session_forbidden(const char *line)
{
    static const char *const verbs[] = {"GET ", "POST ", "CONNECT "};
    for (size_t i = 0; i < HAMR_ARRAY_LEN(verbs); i++)
        if (hamr_strncaseeq(line, verbs[i], strlen(verbs[i])))
            return true;
    /* /^[^ ]+:/ as in Postfix: "Host:", "User-Agent:" ... */
    const char *sp = strchr(line, ' ');
    const char *colon = strchr(line, ':');
    return colon != NULL && colon > line && (sp == NULL || colon < sp) &&
           (colon[1] == ' ' || colon[1] == '\0');
}

/* smtpd_session_command - dispatch one complete, clean command line. */
static void smtpd_session_command(struct smtpd_session *s, const char *line, size_t len)
{
    size_t vlen = 0;

    s->commands++;
    while (vlen < len && line[vlen] != ' ')
        vlen++;
    log_printable(s->verb, sizeof(s->verb), line, vlen);
    if (vlen == 4 && hamr_strncaseeq(line, "BDAT", 4)) {
        /*
         * Before the generic checks, whose replies would leave the chunk's
         * octets to be read as commands: every BDAT line is either read
         * with its chunk or refused with a close (SECURITY.md S22).
         */
        hamr_strlcpy(s->verb, "BDAT", sizeof(s->verb));
        smtpd_session_proceed_bdat(s, vlen < len ? line + vlen + 1 : "");
        return;
    }
    if (smtpd_session_forbidden(line)) {
        smtpd_session_reply(s, SMTPD_REPLY_FORBIDDEN, NULL);
        return;
    }
    if (!smtpd_session_utf8_ok(line, len)) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_UTF8, NULL);
        return;
    }
    for (size_t i = 0; i < vlen; i++) {
        unsigned char c = (unsigned char)line[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
            smtpd_session_reply(s, SMTPD_REPLY_BAD_SYNTAX, NULL);
            return;
        }
    }
    if (vlen == 0) {
        smtpd_session_reply(s, SMTPD_REPLY_BAD_SYNTAX, NULL);
        return;
    }
    const struct smtpd_cmd *cmd = NULL;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(smtpd_session_cmds); i++) {
        if (strlen(smtpd_session_cmds[i].name) == vlen &&
            hamr_strncaseeq(line, smtpd_session_cmds[i].name, vlen)) {
            cmd = &smtpd_session_cmds[i];
            break;
        }
    }
    if (cmd == NULL) {
        smtpd_session_reply(s, SMTPD_REPLY_UNKNOWN_CMD, NULL);
        return;
    }
    for (size_t i = 0; s->verb[i] != '\0'; i++)
        s->verb[i] = (char)(s->verb[i] & ~0x20); /* upper case for logs and EHLO/HELO */
    const char *arg = vlen < len ? line + vlen + 1 : "";
    if ((cmd->flags & SMTPD_CMD_NO_ARG) && arg[strspn(arg, " ")] != '\0') {
        smtpd_session_reply(s, SMTPD_REPLY_NO_ARGS, cmd->name);
        return;
    }
    if ((cmd->flags & SMTPD_CMD_NEED_ARG) && arg[strspn(arg, " ")] == '\0') {
        char syntax[32];
        snprintf(syntax, sizeof(syntax), "%s %s", cmd->name,
                 cmd->name[0] == 'V'   ? "address"
                 : cmd->name[0] == 'A' ? "mechanism"
                 : cmd->name[0] == 'M' ? "FROM:<address>"
                                       : "TO:<address>");
        smtpd_session_reply(s, SMTPD_REPLY_NO_ARGS, syntax);
        return;
    }
    if (cmd->check(s, arg) != 0)
        return;
    cmd->proceed(s, arg);
}

/* ------------------------------------------------------------------ */
/* End of DATA and the sink                                            */
/* ------------------------------------------------------------------ */

/* smtpd_session_free_now - release everything. */
static void smtpd_session_free_now(struct smtpd_session *s)
{
    s->tx = smtpd_tx_free(s->tx);
    buf_free(&s->spare_body);
    if (s->auth_line.data != NULL)
        OPENSSL_cleanse(s->auth_line.data, s->auth_line.cap);
    buf_free(&s->auth_line);
    OPENSSL_cleanse(s->login_user, sizeof(s->login_user));
    if (s->input.data != NULL)
        OPENSSL_cleanse(s->input.data, s->input.cap); /* may hold AUTH payloads */
    buf_free(&s->input);
    free(s);
}

/*
 * smtpd_session_commit_cb - the sink's answer. 250 only on status 0
 * (250 means committed). A detached session frees itself.
 */
static void smtpd_session_commit_cb(void *arg, int status)
{
    struct smtpd_session *s = arg;
    struct smtpd_tx *tx = s->tx;

    HAMR_ASSERT(s->submit_pending && tx != NULL);
    s->submit_pending = false;
    if (status == 0) {
        char from[SMTP_ADDR_PATH_MAX + 1]; /* a UTF-8 sender is logged escaped */
        s->messages++;
        s->junk = 0; /* as Postfix: the junk count starts again after each message */
        log_info("smtpd session=%" PRIu64 " queued id=%s from=<%s> nrcpt=%zu size=%zu%s", s->id,
                 tx->queue_id, log_printable(from, sizeof(from), tx->sender, strlen(tx->sender)),
                 tx->n_rcpts, tx->data_size, s->io_detached ? " client=gone" : "");
    } else {
        log_info("smtpd session=%" PRIu64 " submit failed id=%s err=%s", s->id, tx->queue_id,
                 hamr_errname(status));
    }
    if (s->io_detached) {
        smtpd_session_free_now(s);
        return;
    }
    if (status == HAMR_EINDOUBT) {
        /*
         * The sink cannot tell whether the message will commit. A 250 could
         * be a lie and a 4xx could be followed by a delivery (a phantom, if the
         * client then gives up): hang up without a reply. An SMTP client
         * treats a lost reply to "." as a temporary failure and retries, so
         * the worst case is a duplicate (RFC 1047).
         */
        log_warn("smtpd session=%" PRIu64 " id=%s outcome unknown: closing without a reply", s->id,
                 tx->queue_id);
        smtpd_session_tx_reset(s);
        smtpd_session_hangup(s);
        return;
    }
    char queue_id[SMTPD_QUEUE_ID_MAX];
    hamr_strlcpy(queue_id, tx->queue_id, sizeof(queue_id));
    hamr_strlcpy(s->verb, tx->bdat ? "BDAT" : ".", sizeof(s->verb));
    smtpd_session_tx_reset(s);
    smtpd_session_enter_state(s, SMTPD_STATE_READY);
    if (status == 0)
        smtpd_session_reply(s, SMTPD_REPLY_QUEUED, queue_id);
    else
        smtpd_session_reply(s, smtpd_reply_for_error(status), s->policy->hostname);
    if (s->close_after_commit) {
        s->verb[0] = '\0';
        smtpd_session_reply(s, SMTPD_REPLY_SHUTDOWN, s->policy->hostname);
    }
    smtpd_session_process(s);
    smtpd_session_arm_timer(s);
}

/*
 * smtpd_session_data_end - CRLF.CRLF arrived: check in the order bare
 * LF/CR, NUL, size, header size, hops; then hand the message to the sink.
 */
static void smtpd_session_data_end(struct smtpd_session *s)
{
    const struct smtpd_reader_data *d = smtpd_reader_data(&s->reader);
    struct smtpd_tx *tx = s->tx;
    enum smtpd_reply_id reject = SMTPD_REPLY_COUNT;

    hamr_strlcpy(s->verb, tx->bdat ? "BDAT" : ".", sizeof(s->verb));
    if (d->bare_lf)
        reject = SMTPD_REPLY_DATA_BARE_LF;
    else if (d->bare_cr)
        reject = SMTPD_REPLY_DATA_BARE_CR;
    else if (d->nul)
        reject = SMTPD_REPLY_DATA_NUL;
    else if (d->too_big)
        reject = SMTPD_REPLY_SIZE_EXCEEDED;
    else if (d->header_too_big)
        reject = SMTPD_REPLY_HEADER_EXCEEDED;
    else if (d->received >= s->policy->hopcount_limit)
        reject = SMTPD_REPLY_TOO_MANY_HOPS; /* RFC 5321 6.3, Postfix hopcount_limit */
    else if (d->nomem)
        reject = SMTPD_REPLY_LOCAL_ERROR;
    if (reject != SMTPD_REPLY_COUNT) {
        smtpd_session_tx_reset(s);
        smtpd_session_enter_state(s, SMTPD_STATE_READY);
        smtpd_session_reply(s, reject, NULL);
        return;
    }
    tx->data_size = d->size;
    tx->env = (struct smtpd_envelope){
        .queue_id = tx->queue_id,
        .client_addr = s->client_addr,
        .helo = s->helo,
        .sender = tx->sender,
        .rcpts = (const char *const *)tx->rcpts,
        .n_rcpts = tx->n_rcpts,
        .body = tx->body.data,
        .body_len = tx->body.len,
        .body_8bit = tx->body_8bit,
        .smtputf8 = tx->smtputf8,
        .requiretls = tx->requiretls,
        .ret = tx->ret,
        .envid = tx->has_envid ? tx->envid : NULL,
        .rcpt_dsn = tx->any_dsn ? tx->rcpt_dsn : NULL,
    };
    s->submit_pending = true;
    smtpd_session_enter_state(s, SMTPD_STATE_COMMITTING);
    int rc = s->sink.submit(s->sink.data, &tx->env, smtpd_session_commit_cb, s);
    if (rc != 0) {
        /* The callback will not run. */
        s->submit_pending = false;
        log_info("smtpd session=%" PRIu64 " submit failed id=%s err=%s", s->id, tx->queue_id,
                 hamr_errname(rc));
        smtpd_session_tx_reset(s);
        smtpd_session_enter_state(s, SMTPD_STATE_READY);
        smtpd_session_reply(s, smtpd_reply_for_error(rc), s->policy->hostname);
        return;
    }
    /* Asynchronous processing continues in smtpd_session_commit_cb(). */
}

/* ------------------------------------------------------------------ */
/* Input                                                               */
/* ------------------------------------------------------------------ */

/* smtpd_session_event - act on one reader event. */
static void smtpd_session_event(struct smtpd_session *s, enum smtpd_reader_event ev)
{
    size_t len;
    const char *line;

    if (ev != SMTPD_READER_LINE && ev != SMTPD_READER_DATA_END && ev != SMTPD_READER_CHUNK_END &&
        ev != SMTPD_READER_NEED_MORE &&
        hamr_strncaseeq(smtpd_reader_long_head(&s->reader), "BDAT ", 5)) {
        /* A broken BDAT line (too long, bare LF/CR, NUL): the chunk is not found. */
        smtpd_session_bdat_syntax(s);
        return;
    }
    switch (ev) {
        case SMTPD_READER_LINE:
            line = smtpd_reader_line(&s->reader, &len);
            smtpd_session_command(s, line, len);
            break;
        case SMTPD_READER_LINE_TOO_LONG:
            s->verb[0] = '\0';
            /* RFC 4954 4: an over-long initial response is an AUTH error. */
            if (hamr_strncaseeq(smtpd_reader_long_head(&s->reader), "AUTH ", 5))
                smtpd_session_auth_reply(s, 500, SMTPD_SESSION_AUTH_TOO_LONG);
            else
                smtpd_session_reply(s, SMTPD_REPLY_LINE_TOO_LONG, NULL);
            break;
        case SMTPD_READER_LINE_BARE_LF:
            s->verb[0] = '\0';
            smtpd_session_reply(s, SMTPD_REPLY_CMD_BARE_LF, NULL);
            break;
        case SMTPD_READER_LINE_BARE_CR:
            s->verb[0] = '\0';
            smtpd_session_reply(s, SMTPD_REPLY_CMD_BARE_CR, NULL);
            break;
        case SMTPD_READER_LINE_NUL:
            s->verb[0] = '\0';
            smtpd_session_reply(s, SMTPD_REPLY_BAD_SYNTAX, NULL);
            break;
        case SMTPD_READER_DATA_END:
            smtpd_session_data_end(s);
            break;
        case SMTPD_READER_CHUNK_END:
            smtpd_session_bdat_chunk_end(s);
            break;
        case SMTPD_READER_NEED_MORE:
            break;
    }
}

/*
 * smtpd_session_process - work through every complete line held (RFC 2920),
 * stopping while a submit is pending or output is over the high-water mark.
 */
static void smtpd_session_process(struct smtpd_session *s)
{
    if (s->processing)
        return;
    s->processing = true;
    while (s->state != SMTPD_STATE_CLOSING && !s->submit_pending && !s->auth_pending &&
           !s->output_blocked && s->input_off < s->input.len) {
        size_t used = 0;
        if (s->auth_step != SMTPD_AUTH_STEP_NONE) {
            /* The reader is at a line boundary: it returned the AUTH line. */
            used = smtpd_session_auth_feed(s, s->input.data + s->input_off,
                                           s->input.len - s->input_off);
            s->input_off += used;
            continue;
        }
        enum smtpd_reader_event ev = smtpd_reader_feed(&s->reader, s->input.data + s->input_off,
                                                       s->input.len - s->input_off, &used);
        s->input_off += used;
        smtpd_session_event(s, ev);
    }
    if (s->input_off == s->input.len) {
        buf_reset(&s->input);
        s->input_off = 0;
    } else if (s->input_off > 0) {
        memmove(s->input.data, s->input.data + s->input_off, s->input.len - s->input_off);
        s->input.len -= s->input_off;
        s->input_off = 0;
    }
    s->processing = false;
    smtpd_session_update_reading(s);
}

/* smtpd_session_input - octets from the client. */
void smtpd_session_input(struct smtpd_session *s, const void *data, size_t len)
{
    if (s->io_detached || s->state == SMTPD_STATE_CLOSING || len == 0)
        return;
    if (s->state == SMTPD_STATE_CONNECTED) {
        /* Talking before the greeting (postscreen's pregreet test). */
        s->verb[0] = '\0';
        smtpd_session_reply(s, SMTPD_REPLY_PREGREET, NULL);
        return;
    }
    if ((s->state == SMTPD_STATE_DATA || s->state == SMTPD_STATE_BDAT) &&
        s->policy->min_data_rate > 0) {
        /* Too late for what came before (the timer may not have run yet). */
        if (smtpd_session_now(s) >= smtpd_session_data_deadline(s)) {
            smtpd_session_time_out(s, "data-rate");
            return;
        }
        s->data_octets += len;
    }
    if (buf_append(&s->input, data, len) != 0) {
        s->verb[0] = '\0';
        smtpd_session_reply(s, SMTPD_REPLY_TOO_MUCH_INPUT, s->policy->hostname);
        return;
    }
    smtpd_session_process(s);
    smtpd_session_arm_timer(s);
}

/* smtpd_session_write_done - resume after output fell to the low-water mark. */
void smtpd_session_write_done(struct smtpd_session *s)
{
    if (s->io_detached || !s->output_blocked)
        return;
    size_t queued = s->io.write_queued ? s->io.write_queued(s->io.data) : 0;
    if (queued > SMTPD_SESSION_OUT_LOW)
        return;
    s->output_blocked = false;
    smtpd_session_process(s);
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                          */
/* ------------------------------------------------------------------ */

/* smtpd_session_new - a session in CONNECTED. */
int smtpd_session_new(const struct smtpd_policy *policy,
                      const struct smtpd_sink *sink,
                      const struct smtpd_session_io *io,
                      const char *client_addr,
                      struct smtpd_session **out)
{
    struct smtpd_session *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return HAMR_ENOMEM;
    s->id = smtpd_session_next_id++;
    s->policy = policy;
    s->sink = *sink;
    s->io = *io;
    s->state = SMTPD_STATE_CONNECTED;
    log_printable(s->client_addr, sizeof(s->client_addr), client_addr, strlen(client_addr));
    s->relay_client = smtpd_session_in_relay_networks(policy, s->client_addr);
    smtpd_reader_init(&s->reader);
    buf_init(&s->input, SMTPD_SESSION_INPUT_MAX);
    buf_init(&s->auth_line, SMTPD_SESSION_AUTH_LINE_MAX);
    log_info("smtpd session=%" PRIu64 " connect client=%s relay=%s", s->id, s->client_addr,
             s->relay_client ? "yes" : "no");
    *out = s;
    return 0;
}

/* smtpd_session_greet - send the 220 greeting. */
void smtpd_session_greet(struct smtpd_session *s)
{
    if (s->state != SMTPD_STATE_CONNECTED || s->io_detached)
        return;
    smtpd_session_enter_state(s, SMTPD_STATE_GREETED);
    smtpd_session_reply(s, SMTPD_REPLY_GREETING, s->policy->hostname);
    smtpd_session_arm_timer(s);
}

/* smtpd_session_time_out - log why, then 421 4.4.2 and close. */
static void smtpd_session_time_out(struct smtpd_session *s, const char *reason)
{
    log_info("smtpd session=%" PRIu64 " timeout client=%s state=%s reason=%s%s", s->id,
             s->client_addr, smtpd_state_name(s->state), reason,
             s->state == SMTPD_STATE_DATA || s->state == SMTPD_STATE_BDAT ? " queued=no" : "");
    s->verb[0] = '\0';
    smtpd_session_reply(s, SMTPD_REPLY_TIMEOUT, s->policy->hostname);
}

/* smtpd_session_timeout - the client took too long (RFC 5321 4.5.3.2). */
void smtpd_session_timeout(struct smtpd_session *s)
{
    if (s->io_detached || s->state == SMTPD_STATE_CLOSING || s->submit_pending || s->auth_pending)
        return;
    bool rate = (s->state == SMTPD_STATE_DATA || s->state == SMTPD_STATE_BDAT) &&
                s->policy->min_data_rate > 0 &&
                smtpd_session_now(s) >= smtpd_session_data_deadline(s);
    smtpd_session_time_out(s, rate ? "data-rate" : "idle");
}

/* smtpd_session_shutdown - 421 now, or after the pending submit's (or AUTH's) reply. */
void smtpd_session_shutdown(struct smtpd_session *s)
{
    if (s->io_detached || s->state == SMTPD_STATE_CLOSING)
        return;
    if (s->submit_pending || s->auth_pending) {
        s->close_after_commit = true;
        return;
    }
    s->verb[0] = '\0';
    smtpd_session_reply(s, SMTPD_REPLY_SHUTDOWN, s->policy->hostname);
}

/* smtpd_session_free - the owner lets go; may linger until the sink calls back. */
struct smtpd_session *smtpd_session_free(struct smtpd_session *s)
{
    if (s == NULL)
        return NULL;
    log_info("smtpd session=%" PRIu64
             " disconnect client=%s state=%s commands=%u messages=%u "
             "errors=%u%s%s",
             s->id, s->client_addr, smtpd_state_name(s->state), s->commands, s->messages, s->errors,
             s->submit_pending ? " submit=pending" : "", s->auth_pending ? " auth=pending" : "");
    s->io_detached = true;
    if (s->submit_pending || s->auth_pending)
        return NULL; /* freed by smtpd_session_commit_cb() or smtpd_session_auth_done() */
    smtpd_session_free_now(s);
    return NULL;
}

/* smtpd_session_state - the current state. */
enum smtpd_state smtpd_session_state(const struct smtpd_session *s)
{
    return s->state;
}

/* smtpd_session_tls - STARTTLS accepted? */
bool smtpd_session_tls(const struct smtpd_session *s)
{
    return s->tls;
}

/* smtpd_session_submit_pending - is the sink holding our message? */
bool smtpd_session_submit_pending(const struct smtpd_session *s)
{
    return s->submit_pending;
}

/* smtpd_session_auth_pending - is a password check in flight? */
bool smtpd_session_auth_pending(const struct smtpd_session *s)
{
    return s->auth_pending;
}
