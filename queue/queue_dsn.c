/*
 * queue_dsn.c - delivery status notifications (RFC 3464) in a
 * multipart/report (RFC 6522) for recipients that failed for good.
 *
 * The queue state machine calls this while applying an entry, so the output
 * is a pure function of the arguments: no clock, no host name lookup, no
 * random boundary. Every node builds the same bytes.
 *
 * Layout of the message:
 *   header block (From MAILER-DAEMON, To the original sender, Subject, Date,
 *   Message-ID, Auto-Submitted: auto-replied per RFC 3834, MIME headers)
 *   part 1  text/plain               - the human explanation
 *   part 2  message/delivery-status  - per-message then per-recipient fields
 *   part 3  text/rfc822-headers      - the original header block only (RET=HDRS)
 *
 * Owns nothing beyond the returned buffer. Errors: HAMR_EINVAL, HAMR_ENOMEM,
 * HAMR_ETOOBIG.
 *
 * Security: addresses, reply text and the original headers are untrusted.
 * Everything but the attached headers is reduced to printable ASCII, so no
 * CR or LF can inject a header or a MIME part; the attached headers get CRLF
 * line ends only, and every line is cut at 998 octets. The boundary contains
 * a SHA-256 of the parts and is checked against them, so content cannot
 * forge a part break.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "util/utf8.h"
#include "queue/queue_dsn.h"

/* Text of one sanitised field (an address, a host name, a diagnostic). */
#define QUEUE_DSN_FIELD_MAX (QUEUE_DSN_DIAG_MAX + 1)
/* Room per recipient in the text and report parts (four lines at most each). */
#define QUEUE_DSN_PER_RCPT_MAX (4u * (QUEUE_DSN_LINE_MAX + 2))
/* Room for the fixed text around the recipients. */
#define QUEUE_DSN_FIXED_MAX (16u * 1024)

/* queue_dsn_clean - printable ASCII copy of untrusted text, "" for NULL. */
static const char *queue_dsn_clean(char *out, size_t outlen, const char *in)
{
    if (in == NULL)
        in = "";
    return log_printable(out, outlen, in, strlen(in));
}

/*
 * queue_dsn_addr - an address for the DSN's text and fields: kept as it is
 * when utf8 (an SMTPUTF8 message, RFC 6533) and it is well-formed UTF-8
 * without controls, else made printable ASCII.
 */
static const char *queue_dsn_addr(char *out, size_t outlen, const char *in, bool utf8)
{
    size_t n = in != NULL ? strlen(in) : 0;
    if (utf8 && n < outlen && utf8_valid(in, n)) {
        memcpy(out, in, n + 1);
        return out;
    }
    return queue_dsn_clean(out, outlen, in);
}

/* queue_dsn_kind - what a DSN for these recipients says (all have the kind of the first). */
enum queue_dsn_kind {
    QUEUE_DSN_FAILED,
    QUEUE_DSN_DELAYED,
    QUEUE_DSN_RELAYED,
};

static enum queue_dsn_kind queue_dsn_kind_of(const struct queue_dsn_rcpt *r)
{
    if (r->state == QUEUE_RCPT_PENDING || r->state == QUEUE_RCPT_LEASED)
        return QUEUE_DSN_DELAYED;
    if (r->state == QUEUE_RCPT_DELIVERED)
        return QUEUE_DSN_RELAYED;
    return QUEUE_DSN_FAILED;
}

/* queue_dsn_full - a failure under RET=FULL with the whole body at hand: return it all. */
static bool queue_dsn_full(const struct queue_msg *orig, enum queue_dsn_kind kind)
{
    return kind == QUEUE_DSN_FAILED && orig->ext != NULL && orig->ext->ret == QUEUE_RET_FULL &&
           queue_msg_body(orig) != NULL && orig->body_len > 0 &&
           orig->body_len <= QUEUE_DSN_HEADERS_MAX;
}

/* queue_dsn_token - copy keeping only characters safe in a Message-ID or boundary. */
static void queue_dsn_token(char *out, size_t outlen, const char *in)
{
    size_t j = 0;
    if (outlen == 0)
        return;
    for (size_t i = 0; in != NULL && in[i] != '\0' && j + 1 < outlen; i++) {
        unsigned char c = (unsigned char)in[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '.' || c == '_';
        out[j++] = ok ? (char)c : '_';
    }
    if (j == 0 && outlen > 1)
        out[j++] = '_';
    out[j] = '\0';
}

/* queue_dsn_line - append one formatted line, cut at 998 octets, then CRLF. */
__attribute__((format(printf, 2, 3))) static int queue_dsn_line(struct buf *b, const char *fmt, ...)
{
    char line[QUEUE_DSN_LINE_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0)
        return HAMR_EINVAL;
    int rv = buf_append(b, line, strlen(line));
    if (rv == 0)
        rv = buf_append(b, "\r\n", 2);
    return rv;
}

/* queue_dsn_date - RFC 5322 date-time in UTC, English names. */
void queue_dsn_date(uint64_t ms, char *out, size_t outlen)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    /* strftime would follow the locale; RFC 5322 names are English. */
    if (gmtime_r(&t, &tm) == NULL || tm.tm_year + 1900 > 9999) {
        t = 0;
        gmtime_r(&t, &tm);
    }
    snprintf(out, outlen, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7], tm.tm_mday,
             months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* queue_dsn_digits - length of a run of 1..3 digits at p, 0 if none or longer. */
static size_t queue_dsn_digits(const char *p)
{
    size_t n = 0;
    while (n < 4 && p[n] >= '0' && p[n] <= '9')
        n++;
    return n >= 1 && n <= 3 ? n : 0;
}

/* queue_dsn_status - RFC 3463 status of one failed recipient. */
void queue_dsn_status(const struct queue_dsn_rcpt *r, char out[QUEUE_DSN_STATUS_MAX])
{
    /* RFC 3463 section 3.5: 4.4.7 "Delivery time expired". */
    if (r->state == QUEUE_RCPT_EXPIRED) {
        hamr_strlcpy(out, "4.4.7", QUEUE_DSN_STATUS_MAX);
        return;
    }
    enum queue_dsn_kind kind = queue_dsn_kind_of(r);
    if (kind == QUEUE_DSN_RELAYED) {
        hamr_strlcpy(out, "2.0.0", QUEUE_DSN_STATUS_MAX);
        return;
    }
    char cls = kind == QUEUE_DSN_DELAYED ? '4' : '5';
    const char *p = r->diagnostic ? r->diagnostic : "";
    while (*p == ' ')
        p++;
    /* The text may repeat the reply code: "550 5.1.1 ..." or "550-5.1.1 ...". */
    if (p[0] >= '2' && p[0] <= '5' && queue_dsn_digits(p) == 3 && (p[3] == ' ' || p[3] == '-'))
        p += 4;
    /* RFC 3463 section 2: class "." subject "." detail, 1 to 3 digits each. */
    if ((p[0] == '2' || p[0] == '4' || p[0] == '5') && p[1] == '.') {
        const char *s = p + 2;
        size_t ns = queue_dsn_digits(s);
        if (ns != 0 && s[ns] == '.') {
            const char *d = s + ns + 1;
            size_t nd = queue_dsn_digits(d);
            char end = d[nd];
            if (nd != 0 && (end == '\0' || end == ' ' || end == ';' || end == ',')) {
                /* Action: failed says permanent, delayed transient, whatever the reply gave. */
                snprintf(out, QUEUE_DSN_STATUS_MAX, "%c.%.*s.%.*s", cls, (int)ns, s, (int)nd, d);
                return;
            }
        }
    }
    snprintf(out, QUEUE_DSN_STATUS_MAX, "%c.0.0", cls);
}

/* queue_dsn_header_block - length of the original header block of body, bounded. */
static size_t queue_dsn_header_block(const uint8_t *body, size_t len)
{
    size_t i = 0;
    /* The block ends before the first empty line (RFC 5322 section 2.1). */
    while (i < len) {
        const uint8_t *nl = memchr(body + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - body) + 1 : len;
        size_t content = end - i;
        if (nl)
            content--;
        if (content > 0 && body[i + content - 1] == '\r')
            content--;
        if (content == 0)
            break;
        if (end > QUEUE_DSN_HEADERS_MAX)
            break;
        i = end;
    }
    return i;
}

/*
 * queue_dsn_part_headers - the original headers (or with full the whole
 * message) with CRLF lines of at most 998 octets.
 */
static int queue_dsn_part_headers(struct buf *b,
                                  const struct queue_msg *orig,
                                  bool full,
                                  bool *eight_bit)
{
    size_t n = full ? orig->body_len : queue_dsn_header_block(queue_msg_body(orig), orig->body_len);
    const uint8_t *p = queue_msg_body(orig);
    size_t i = 0;
    int rv = 0;
    *eight_bit = false;
    while (rv == 0 && i < n) {
        /* A bare CR or LF ends a line here too: the output has CRLF only. */
        size_t j = i;
        while (j < n && p[j] != '\r' && p[j] != '\n')
            j++;
        char line[QUEUE_DSN_LINE_MAX];
        size_t k = 0;
        for (size_t x = i; x < j && k < sizeof(line); x++) {
            uint8_t c = p[x];
            if (c >= 0x80)
                *eight_bit = true;
            line[k++] = c == '\0' ? '?' : (char)c;
        }
        rv = buf_append(b, line, k);
        if (rv == 0)
            rv = buf_append(b, "\r\n", 2);
        if (j < n && p[j] == '\r' && j + 1 < n && p[j + 1] == '\n')
            j++;
        i = j + 1;
    }
    return rv;
}

/* queue_dsn_all_expired - every failed recipient ran out of queue time. */
static bool queue_dsn_all_expired(const struct queue_dsn_rcpt *rcpts, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (rcpts[i].state != QUEUE_RCPT_EXPIRED)
            return false;
    return true;
}

/* The opening words of part 1, by kind. */
static const char *const queue_dsn_intro[][4] = {
    [QUEUE_DSN_FAILED] = {"Your message could not be delivered to one or more",
                          "recipients and has been given up on. The reasons",
                          "are listed below; the headers of your message are", "attached."},
    [QUEUE_DSN_DELAYED] =
        {"#### THIS IS A WARNING ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE. ####",
         "Your message could not be delivered yet to the recipients",
         "listed below. It is still being retried; the reasons",
         "are listed below; the headers of your message are attached."},
    [QUEUE_DSN_RELAYED] = {"Your message was relayed to the recipients listed below.",
                           "The next hop does not offer delivery notifications, so",
                           "this is the last notice you will get from this path about",
                           "these recipients. The headers of your message are attached."},
};

/* queue_dsn_part_text - part 1: what happened, in words. */
static int queue_dsn_part_text(struct buf *b,
                               const struct queue_msg *orig,
                               const struct queue_dsn_rcpt *rcpts,
                               size_t n,
                               const char *reporter)
{
    char addr[QUEUE_DSN_FIELD_MAX], diag[QUEUE_DSN_FIELD_MAX], remote[QUEUE_DSN_FIELD_MAX];
    enum queue_dsn_kind kind = queue_dsn_kind_of(&rcpts[0]);
    int rv = 0;
    rv = rv ? rv : queue_dsn_line(b, "This is the mail delivery system at %s.", reporter);
    rv = rv ? rv : queue_dsn_line(b, "%s", "");
    for (size_t k = 0; k < 4; k++)
        rv = rv ? rv : queue_dsn_line(b, "%s", queue_dsn_intro[kind][k]);
    if (kind == QUEUE_DSN_DELAYED) {
        char until[64];
        queue_dsn_date(orig->expires_at_ms, until, sizeof(until));
        rv = rv ? rv : queue_dsn_line(b, "It will be retried until %s.", until);
    }
    rv = rv ? rv : queue_dsn_line(b, "%s", "");
    for (size_t i = 0; rv == 0 && i < n; i++) {
        const struct queue_dsn_rcpt *r = &rcpts[i];
        queue_dsn_addr(addr, sizeof(addr), r->addr, orig->smtputf8);
        queue_dsn_clean(diag, sizeof(diag), r->diagnostic);
        queue_dsn_clean(remote, sizeof(remote), r->remote);
        char reply[QUEUE_DSN_FIELD_MAX + 16];
        if (r->smtp_code != 0)
            snprintf(reply, sizeof(reply), "%u %s", r->smtp_code, diag);
        else
            snprintf(reply, sizeof(reply), "%s", diag);
        if (kind == QUEUE_DSN_RELAYED && remote[0] != '\0')
            rv = queue_dsn_line(b, "<%s>: relayed to %s: %s", addr, remote, reply);
        else if (kind == QUEUE_DSN_RELAYED)
            rv = queue_dsn_line(b, "<%s>: relayed", addr);
        else if (kind == QUEUE_DSN_DELAYED)
            rv = queue_dsn_line(b, "<%s>: delayed: %s", addr, reply[0] ? reply : "not yet tried");
        else if (r->state == QUEUE_RCPT_EXPIRED && reply[0] != '\0')
            rv = queue_dsn_line(b, "<%s>: delivery time expired; last error: %s", addr, reply);
        else if (r->state == QUEUE_RCPT_EXPIRED)
            rv = queue_dsn_line(b, "<%s>: delivery time expired", addr);
        else if (remote[0] != '\0')
            rv = queue_dsn_line(b, "<%s>: host %s said: %s", addr, remote, reply);
        else
            rv = queue_dsn_line(b, "<%s>: %s", addr, reply[0] ? reply : "delivery failed");
        rv = rv ? rv : queue_dsn_line(b, "%s", "");
    }
    return rv;
}

/* queue_dsn_part_report - part 2: the machine-readable report (RFC 3464 section 2). */
static int queue_dsn_part_report(struct buf *b,
                                 const struct queue_msg *orig,
                                 const struct queue_dsn_rcpt *rcpts,
                                 size_t n,
                                 const char *reporter)
{
    static const char *const action[] = {
        [QUEUE_DSN_FAILED] = "failed",
        [QUEUE_DSN_DELAYED] = "delayed",
        [QUEUE_DSN_RELAYED] = "relayed",
    };
    char field[QUEUE_DSN_FIELD_MAX], date[64];
    enum queue_dsn_kind kind = queue_dsn_kind_of(&rcpts[0]);
    /* RFC 6533 3: the utf-8 address type, in a message/global-delivery-status. */
    const char *type = orig->smtputf8 ? "utf-8" : "rfc822";
    int rv = 0;
    /* Per-message fields (section 2.2). */
    if (orig->ext != NULL && orig->ext->envid != NULL) {
        queue_dsn_clean(field, sizeof(field), orig->ext->envid);
        rv = rv ? rv : queue_dsn_line(b, "Original-Envelope-Id: %s", field);
    }
    rv = rv ? rv : queue_dsn_line(b, "Reporting-MTA: dns; %s", reporter);
    queue_dsn_clean(field, sizeof(field), orig->id);
    rv = rv ? rv : queue_dsn_line(b, "X-Hamr-Queue-ID: %s", field);
    queue_dsn_date(orig->received_at_ms, date, sizeof(date));
    rv = rv ? rv : queue_dsn_line(b, "Arrival-Date: %s", date);
    /* Per-recipient fields (section 2.3), each group after an empty line. */
    for (size_t i = 0; rv == 0 && i < n; i++) {
        const struct queue_dsn_rcpt *r = &rcpts[i];
        char status[QUEUE_DSN_STATUS_MAX];
        queue_dsn_status(r, status);
        rv = rv ? rv : queue_dsn_line(b, "%s", "");
        if (r->orcpt != NULL && strchr(r->orcpt, ';') != NULL) {
            /* The type was checked at RCPT (an atom); the token rule keeps it one. */
            const char *semi = strchr(r->orcpt, ';');
            char otype[40], raw[40];
            snprintf(raw, sizeof(raw), "%.*s", (int)(semi - r->orcpt), r->orcpt);
            queue_dsn_token(otype, sizeof(otype), raw);
            queue_dsn_addr(field, sizeof(field), semi + 1, orig->smtputf8);
            rv = rv ? rv : queue_dsn_line(b, "Original-Recipient: %s; %s", otype, field);
        }
        queue_dsn_addr(field, sizeof(field), r->addr, orig->smtputf8);
        rv = rv ? rv : queue_dsn_line(b, "Final-Recipient: %s; %s", type, field);
        rv = rv ? rv : queue_dsn_line(b, "Action: %s", action[kind]);
        rv = rv ? rv : queue_dsn_line(b, "Status: %s", status);
        if (r->remote != NULL && r->remote[0] != '\0') {
            queue_dsn_clean(field, sizeof(field), r->remote);
            rv = rv ? rv : queue_dsn_line(b, "Remote-MTA: dns; %s", field);
        }
        if (r->smtp_code != 0) {
            queue_dsn_clean(field, sizeof(field), r->diagnostic);
            rv = rv ? rv : queue_dsn_line(b, "Diagnostic-Code: smtp; %u %s", r->smtp_code, field);
        }
        if (kind == QUEUE_DSN_DELAYED) {
            queue_dsn_date(orig->expires_at_ms, date, sizeof(date));
            rv = rv ? rv : queue_dsn_line(b, "Will-Retry-Until: %s", date);
        }
    }
    return rv;
}

/* queue_dsn_boundary - a boundary that occurs in none of the parts. */
static int queue_dsn_boundary(char *out, size_t outlen, struct buf *parts[], size_t n_parts)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return HAMR_ENOMEM;
    int ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    for (size_t i = 0; ok && i < n_parts; i++)
        ok = EVP_DigestUpdate(ctx, parts[i]->data ? parts[i]->data : (uint8_t *)"", parts[i]->len);
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    if (!ok || mdlen < 16)
        return HAMR_ENOMEM;
    char hex[33];
    for (unsigned i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    /*
     * Text cannot contain the hash of itself except by chance, but check
     * anyway and add a counter until no part contains the boundary.
     */
    for (unsigned k = 0; k < 1000; k++) {
        if (k == 0)
            snprintf(out, outlen, "=_hamr_%s", hex);
        else
            snprintf(out, outlen, "=_hamr_%s.%u", hex, k);
        bool clash = false;
        for (size_t i = 0; !clash && i < n_parts; i++)
            clash = parts[i]->len && memmem(parts[i]->data, parts[i]->len, out, strlen(out));
        if (!clash)
            return 0;
    }
    return HAMR_EINVAL;
}

/* queue_dsn_assemble - the header block, then the parts between boundaries. */
static int queue_dsn_assemble(struct buf *b,
                              const struct queue_msg *orig,
                              const struct queue_dsn_rcpt *rcpts,
                              size_t n,
                              const char *reporter,
                              uint64_t timestamp_ms,
                              const char *dsn_id,
                              struct buf *parts[3],
                              bool eight_bit)
{
    enum queue_dsn_kind kind = queue_dsn_kind_of(&rcpts[0]);
    bool full = queue_dsn_full(orig, kind), utf8 = orig->smtputf8;
    /* RFC 6533 6.3 and 6.4: the global types for an SMTPUTF8 message. */
    const char *part_headers[3][2] = {
        {"Content-Description: Notification", "Content-Type: text/plain; charset=utf-8"},
        {"Content-Description: Delivery report",
         utf8 ? "Content-Type: message/global-delivery-status"
              : "Content-Type: message/delivery-status"},
        {full                       ? "Content-Description: Undelivered Message"
         : kind == QUEUE_DSN_FAILED ? "Content-Description: Undelivered Message Headers"
                                    : "Content-Description: Message Headers",
         full ? (utf8 ? "Content-Type: message/global" : "Content-Type: message/rfc822")
              : (utf8 ? "Content-Type: message/global-headers"
                      : "Content-Type: text/rfc822-headers")},
    };
    if (!utf8)
        part_headers[0][1] = "Content-Type: text/plain; charset=us-ascii";
    char boundary[80], date[64], sender[QUEUE_DSN_FIELD_MAX], id[QUEUE_ID_MAX];
    int rv = queue_dsn_boundary(boundary, sizeof(boundary), parts, 3);
    if (rv != 0)
        return rv;
    queue_dsn_date(timestamp_ms, date, sizeof(date));
    queue_dsn_addr(sender, sizeof(sender), orig->sender, utf8);
    queue_dsn_token(id, sizeof(id), dsn_id);
    const char *subject = kind == QUEUE_DSN_DELAYED   ? "Delayed Mail (still being retried)"
                          : kind == QUEUE_DSN_RELAYED ? "Successful Mail Delivery Report"
                          : queue_dsn_all_expired(rcpts, n)
                              ? "Undelivered Mail Returned to Sender: delivery time expired"
                              : "Undelivered Mail Returned to Sender";

    rv = rv ? rv : queue_dsn_line(b, "From: Mail Delivery System <MAILER-DAEMON@%s>", reporter);
    rv = rv ? rv : queue_dsn_line(b, "To: <%s>", sender);
    rv = rv ? rv : queue_dsn_line(b, "Subject: %s", subject);
    rv = rv ? rv : queue_dsn_line(b, "Date: %s", date);
    rv = rv ? rv : queue_dsn_line(b, "Message-ID: <%s@%s>", id, reporter);
    /* RFC 3834 section 5: a DSN is an automatic reply; RFC 3464 section 2. */
    rv = rv ? rv : queue_dsn_line(b, "%s", "Auto-Submitted: auto-replied");
    rv = rv ? rv : queue_dsn_line(b, "%s", "MIME-Version: 1.0");
    rv = rv ? rv
            : queue_dsn_line(b, "%s",
                             "Content-Type: multipart/report; report-type=delivery-status;");
    rv = rv ? rv : queue_dsn_line(b, "\tboundary=\"%s\"", boundary);
    rv = rv ? rv : queue_dsn_line(b, "%s", "");
    rv = rv ? rv : queue_dsn_line(b, "%s", "This is a MIME-encapsulated message.");
    for (int i = 0; rv == 0 && i < 3; i++) {
        rv = rv ? rv : queue_dsn_line(b, "%s", "");
        rv = rv ? rv : queue_dsn_line(b, "--%s", boundary);
        rv = rv ? rv : queue_dsn_line(b, "%s", part_headers[i][0]);
        rv = rv ? rv : queue_dsn_line(b, "%s", part_headers[i][1]);
        if ((i == 2 && eight_bit) || (i < 2 && utf8))
            rv = rv ? rv : queue_dsn_line(b, "%s", "Content-Transfer-Encoding: 8bit");
        rv = rv ? rv : queue_dsn_line(b, "%s", "");
        rv = rv ? rv : buf_append(b, parts[i]->data, parts[i]->len);
    }
    rv = rv ? rv : queue_dsn_line(b, "%s", "");
    rv = rv ? rv : queue_dsn_line(b, "--%s--", boundary);
    return rv;
}

/* queue_dsn_build - the three parts, a boundary none contains, then the whole. */
int queue_dsn_build(const struct queue_msg *orig,
                    const struct queue_dsn_rcpt *rcpts,
                    size_t n_rcpts,
                    const char *reporter,
                    uint64_t timestamp_ms,
                    const char *dsn_id,
                    uint8_t **out,
                    size_t *len,
                    bool *body_8bit)
{
    if (orig == NULL || rcpts == NULL || n_rcpts == 0 || dsn_id == NULL)
        return HAMR_EINVAL;
    if (n_rcpts > (SIZE_MAX - 4 * QUEUE_DSN_FIXED_MAX) / (2 * QUEUE_DSN_PER_RCPT_MAX))
        return HAMR_ETOOBIG;
    char host[256];
    queue_dsn_token(host, sizeof(host), reporter && reporter[0] ? reporter : "localhost");

    /* Every part has a bound, and so the whole. */
    size_t text_max = QUEUE_DSN_FIXED_MAX + n_rcpts * QUEUE_DSN_PER_RCPT_MAX;
    size_t headers_max = QUEUE_DSN_HEADERS_MAX + QUEUE_DSN_FIXED_MAX;
    struct buf text, report, headers, all;
    buf_init(&text, text_max);
    buf_init(&report, text_max);
    buf_init(&headers, headers_max);
    buf_init(&all, 2 * text_max + headers_max + QUEUE_DSN_FIXED_MAX);
    struct buf *parts[3] = {&text, &report, &headers};
    bool eight_bit = false;

    bool full = queue_dsn_full(orig, queue_dsn_kind_of(&rcpts[0]));
    int rv = queue_dsn_part_text(&text, orig, rcpts, n_rcpts, host);
    rv = rv ? rv : queue_dsn_part_report(&report, orig, rcpts, n_rcpts, host);
    rv = rv ? rv : queue_dsn_part_headers(&headers, orig, full, &eight_bit);
    rv = rv ? rv
            : queue_dsn_assemble(&all, orig, rcpts, n_rcpts, host, timestamp_ms, dsn_id, parts,
                                 eight_bit);
    buf_free(&text);
    buf_free(&report);
    buf_free(&headers);
    if (rv != 0) {
        buf_free(&all);
        return rv;
    }
    *out = buf_steal(&all, len);
    *body_8bit = eight_bit || orig->smtputf8;
    return 0;
}
