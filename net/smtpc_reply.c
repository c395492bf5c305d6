/*
 * smtpc_reply.c - resumable parser for SMTP replies from a next hop.
 *
 * Turns the byte stream a server sends into complete replies (RFC 5321
 * 4.2): lines "ddd-text" continue a reply, "ddd text" or "ddd" end it, and
 * every line of one reply carries the same code. A line ends at LF; a CR just
 * before it is dropped (Postfix's smtp_get is as lenient); any other CR is
 * kept as text and printed as '?'.
 *
 * Owns nothing: the parser is a fixed-size struct, so a hostile server cannot
 * make it grow. Errors: HAMR_EPROTO for a malformed reply, with the reason in
 * errmsg; it is sticky and the connection is to be discarded.
 *
 * Security: parses untrusted network input (SECURITY.md S21). Lines are
 * capped at SMTPC_REPLY_LINE_MAX bytes and replies at SMTPC_REPLY_LINES_MAX
 * lines; a code whose first digit is not 2..5, a line with neither ' ' nor
 * '-' after the code, mixed codes and NUL bytes are malformed. The text kept
 * for logs and results is made printable here.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "net/smtpc_reply.h"

/* smtpc_reply_init - an empty parser. */
void smtpc_reply_init(struct smtpc_reply_parser *p)
{
    memset(&p->reply, 0, sizeof(p->reply));
    p->line_len = 0;
    p->err = 0;
    p->errmsg[0] = '\0';
}

/* smtpc_reply_next - forget the complete reply and start on the next one. */
void smtpc_reply_next(struct smtpc_reply_parser *p)
{
    memset(&p->reply, 0, sizeof(p->reply));
    p->line_len = 0;
}

/* smtpc_reply_fail - make the parser's error sticky and say why. */
static int smtpc_reply_fail(struct smtpc_reply_parser *p, const char *why)
{
    p->err = HAMR_EPROTO;
    hamr_strlcpy(p->errmsg, why, sizeof(p->errmsg));
    return HAMR_EPROTO;
}

/* smtpc_reply_keyword - does line (len) start with keyword kw as a whole word? */
static bool smtpc_reply_keyword(const char *line, size_t len, const char *kw)
{
    size_t n = strlen(kw);
    if (len < n || !hamr_strncaseeq(line, kw, n))
        return false;
    return len == n || line[n] == ' ';
}

/*
 * smtpc_reply_auth_mechs - the mechanisms of an AUTH line (after "AUTH "
 * or "AUTH="), space-separated, any case: the ones the client knows.
 */
static unsigned smtpc_reply_auth_mechs(const char *s, size_t len)
{
    unsigned ext = SMTPC_EXT_AUTH;
    size_t i = 0;
    while (i < len) {
        while (i < len && s[i] == ' ')
            i++;
        size_t start = i;
        while (i < len && s[i] != ' ')
            i++;
        size_t n = i - start;
        if (n == 5 && hamr_strncaseeq(s + start, "PLAIN", 5))
            ext |= SMTPC_EXT_AUTH_PLAIN;
        else if (n == 5 && hamr_strncaseeq(s + start, "LOGIN", 5))
            ext |= SMTPC_EXT_AUTH_LOGIN;
    }
    return ext;
}

/* smtpc_reply_ehlo_line - note a keyword from one EHLO line (text after "250-"). */
void smtpc_reply_ehlo_line(struct smtpc_reply *r, const char *line, size_t len)
{
    if (len >= 4 && hamr_strncaseeq(line, "AUTH", 4) &&
        (len == 4 || line[4] == ' ' || line[4] == '=')) {
        /* RFC 4954 3; "AUTH=" is what servers once wrote for old clients. */
        r->ext |= len > 5 ? smtpc_reply_auth_mechs(line + 5, len - 5) : SMTPC_EXT_AUTH;
    } else if (smtpc_reply_keyword(line, len, "PIPELINING")) {
        r->ext |= SMTPC_EXT_PIPELINING;
    } else if (smtpc_reply_keyword(line, len, "8BITMIME")) {
        r->ext |= SMTPC_EXT_8BITMIME;
    } else if (smtpc_reply_keyword(line, len, "STARTTLS")) {
        r->ext |= SMTPC_EXT_STARTTLS;
    } else if (smtpc_reply_keyword(line, len, "CHUNKING")) {
        r->ext |= SMTPC_EXT_CHUNKING;
    } else if (smtpc_reply_keyword(line, len, "DSN")) {
        r->ext |= SMTPC_EXT_DSN;
    } else if (smtpc_reply_keyword(line, len, "SMTPUTF8")) {
        r->ext |= SMTPC_EXT_SMTPUTF8;
    } else if (smtpc_reply_keyword(line, len, "REQUIRETLS")) {
        r->ext |= SMTPC_EXT_REQUIRETLS;
    } else if (smtpc_reply_keyword(line, len, "SIZE")) {
        /* RFC 1870: "SIZE" [SP number]; no number or 0 means no fixed limit. */
        uint64_t v = 0;
        for (size_t i = 5; i < len && line[i] >= '0' && line[i] <= '9'; i++) {
            unsigned d = (unsigned)(line[i] - '0');
            if (v > (UINT64_MAX - d) / 10) {
                v = 0; /* absurd: treat as no limit */
                break;
            }
            v = v * 10 + d;
        }
        r->ext |= SMTPC_EXT_SIZE;
        r->size_limit = v;
    }
}

/* smtpc_reply_add_text - append printable text of one line to the reply. */
static void smtpc_reply_add_text(struct smtpc_reply *r, const char *s, size_t n)
{
    if (r->text_len > 0 && n > 0 && r->text_len + 1 < sizeof(r->text))
        r->text[r->text_len++] = ' ';
    for (size_t i = 0; i < n && r->text_len + 1 < sizeof(r->text); i++) {
        unsigned char c = (unsigned char)s[i];
        r->text[r->text_len++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    r->text[r->text_len] = '\0';
}

/* smtpc_reply_line - check one complete line; returns 1 if it ended the reply. */
static int smtpc_reply_line(struct smtpc_reply_parser *p)
{
    const char *l = p->line;
    size_t len = p->line_len;
    struct smtpc_reply *r = &p->reply;

    if (len > 0 && l[len - 1] == '\r')
        len--;
    if (len > SMTPC_REPLY_LINE_MAX)
        return smtpc_reply_fail(p, "reply line too long");
    /* RFC 5321 4.2: Reply-code = %x32-35 %x30-35 %x30-39; we accept any second digit. */
    if (len < 3 || l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '9' || l[2] < '0' || l[2] > '9')
        return smtpc_reply_fail(p, "bad reply code");
    if (len > 3 && l[3] != ' ' && l[3] != '-')
        return smtpc_reply_fail(p, "bad reply line");
    unsigned code =
        (unsigned)(l[0] - '0') * 100 + (unsigned)(l[1] - '0') * 10 + (unsigned)(l[2] - '0');
    if (r->n_lines > 0 && code != r->code)
        return smtpc_reply_fail(p, "reply lines with different codes");
    if (r->n_lines >= SMTPC_REPLY_LINES_MAX)
        return smtpc_reply_fail(p, "too many reply lines");
    r->code = code;
    r->n_lines++;
    const char *text = len > 4 ? l + 4 : l + len;
    size_t text_len = len > 4 ? len - 4 : 0;
    if (r->n_lines > 1)
        smtpc_reply_ehlo_line(r, text, text_len);
    smtpc_reply_add_text(r, text, text_len);
    return len == 3 || l[3] == ' ';
}

/* smtpc_reply_feed - consume bytes until one reply is complete. */
int smtpc_reply_feed(struct smtpc_reply_parser *p, const char *data, size_t len, size_t *used)
{
    *used = 0;
    if (p->err != 0)
        return p->err;
    for (size_t i = 0; i < len; i++) {
        char c = data[i];
        if (c == '\0')
            return smtpc_reply_fail(p, "NUL in reply");
        if (c != '\n') {
            /* Room for a full line plus the CR of its CRLF; beyond is too long. */
            if (p->line_len >= sizeof(p->line))
                return smtpc_reply_fail(p, "reply line too long");
            p->line[p->line_len++] = c;
            continue;
        }
        int rv = smtpc_reply_line(p);
        p->line_len = 0;
        if (rv < 0)
            return rv;
        if (rv == 1) {
            *used = i + 1;
            return 1;
        }
    }
    *used = len;
    return 0;
}
