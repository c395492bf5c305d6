/*
 * smtpd_reply.c - the reply table of the inbound SMTP server.
 *
 * Owns: the constant table of every reply the session sends, and the map
 * from HAMR_E* codes to replies. Sessions never reply with ad-hoc codes.
 *
 * Enhanced status codes follow RFC 3463 and Postfix's wording. RFC 2034
 * section 3 exempts the greeting, the HELO/EHLO replies and the 354
 * intermediate reply from enhanced codes; every other reply carries one.
 *
 * Security: the "%s" argument is copied as given; callers pass only text
 * that is already printable (parsed addresses, our hostname, queue ids).
 */
#include <stdio.h>
#include <string.h>

#include "util/common.h"
#include "util/err.h"
#include "net/smtpd_reply.h"

static const struct smtpd_reply smtpd_reply_table[SMTPD_REPLY_COUNT] = {
    [SMTPD_REPLY_GREETING] = {220, "", "%s ESMTP hamr", false},
    [SMTPD_REPLY_OK] = {250, "2.0.0", "Ok", false},
    [SMTPD_REPLY_MAIL_OK] = {250, "2.1.0", "Ok", false},
    [SMTPD_REPLY_RCPT_OK] = {250, "2.1.5", "Ok", false},
    [SMTPD_REPLY_DATA_GO] = {354, "", "End data with <CR><LF>.<CR><LF>", false},
    [SMTPD_REPLY_QUEUED] = {250, "2.0.0", "Ok: queued as %s", false},
    [SMTPD_REPLY_BYE] = {221, "2.0.0", "Bye", false},
    [SMTPD_REPLY_VRFY] = {252, "2.5.2", "Cannot VRFY user; try RCPT to attempt delivery", false},
    [SMTPD_REPLY_HELP] = {214, "2.0.0",
                          "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP", false},
    [SMTPD_REPLY_FORBIDDEN] = {221, "2.7.0", "Error: I can break rules, too. Goodbye.", false},
    [SMTPD_REPLY_PREGREET] = {554, "5.5.0", "Error: SMTP protocol synchronization", false},
    [SMTPD_REPLY_DESYNC] = {554, "5.5.0", "Error: SMTP protocol synchronization", false},
    [SMTPD_REPLY_LINE_TOO_LONG] = {500, "5.5.2", "Error: line too long", true},
    [SMTPD_REPLY_BAD_SYNTAX] = {500, "5.5.2", "Error: bad syntax", true},
    [SMTPD_REPLY_BAD_UTF8] = {500, "5.5.2", "Error: bad UTF-8 syntax", true},
    [SMTPD_REPLY_CMD_BARE_LF] = {500, "5.5.2", "Error: bare <LF> received", true},
    [SMTPD_REPLY_CMD_BARE_CR] = {500, "5.5.2", "Error: bare <CR> received", true},
    [SMTPD_REPLY_UNKNOWN_CMD] = {502, "5.5.2", "Error: command not recognized", true},
    [SMTPD_REPLY_BAD_ORDER] = {503, "5.5.1", "Error: %s", true},
    [SMTPD_REPLY_HELO_SYNTAX] = {501, "5.5.4", "Syntax: %s hostname", true},
    [SMTPD_REPLY_SENDER_SYNTAX] = {501, "5.1.7", "Bad sender address syntax", true},
    [SMTPD_REPLY_RCPT_SYNTAX] = {501, "5.1.3", "Bad recipient address syntax", true},
    [SMTPD_REPLY_NO_ARGS] = {501, "5.5.4", "Syntax: %s", true},
    [SMTPD_REPLY_PARAM_SYNTAX] = {501, "5.5.4", "Bad %s parameter syntax", true},
    [SMTPD_REPLY_PARAM_UNKNOWN] = {555, "5.5.4", "Unsupported option: %s", true},
    [SMTPD_REPLY_PARAM_TWICE] = {501, "5.5.4", "Duplicate %s parameter", true},
    /*
     * RFC 8689 2: REQUIRETLS is offered inside TLS only. 530 as RFC 3207 4
     * answers a command that needs TLS first; 5.7.10 "Encryption needed"
     * (RFC 5248).
     */
    [SMTPD_REPLY_REQUIRETLS_TLS] = {530, "5.7.10", "REQUIRETLS needs TLS: issue STARTTLS first",
                                    true},
    [SMTPD_REPLY_UTF8] = {553, "5.6.7", "Must declare SMTPUTF8 to send unicode address", true},
    [SMTPD_REPLY_SIZE_EXCEEDED] = {552, "5.3.4", "Message size exceeds fixed limit", true},
    [SMTPD_REPLY_HEADER_EXCEEDED] = {552, "5.3.4", "Message header size exceeds limit", true},
    [SMTPD_REPLY_TOO_MANY_RCPTS] = {452, "4.5.3", "Error: too many recipients", true},
    [SMTPD_REPLY_RELAY_DENIED] = {554, "5.7.1", "%s: Relay access denied", true},
    [SMTPD_REPLY_RCPT_UNKNOWN] = {550, "5.1.1", "%s: Recipient address rejected: User unknown",
                                  true},
    [SMTPD_REPLY_DATA_BARE_LF] = {550, "5.5.2", "Error: bare <LF> received", true},
    [SMTPD_REPLY_DATA_BARE_CR] = {550, "5.5.2", "Error: bare <CR> received", true},
    [SMTPD_REPLY_DATA_NUL] = {554, "5.6.0", "Message contains NUL characters", true},
    [SMTPD_REPLY_TOO_MANY_HOPS] = {554, "5.4.6", "Too many hops", true},
    [SMTPD_REPLY_TOO_MANY_ERRORS] = {421, "4.7.0", "%s Error: too many errors", false},
    [SMTPD_REPLY_TIMEOUT] = {421, "4.4.2", "%s Error: timeout exceeded", false},
    [SMTPD_REPLY_TOO_MUCH_INPUT] = {421, "4.7.0", "%s Error: too much pipelined input", false},
    [SMTPD_REPLY_TOO_MANY_CONNS] = {421, "4.7.0", "%s Error: too many connections", false},
    [SMTPD_REPLY_DRAINING] = {421, "4.3.2", "%s Service not available, draining", false},
    [SMTPD_REPLY_SHUTDOWN] = {421, "4.3.2", "%s Service not available, shutting down", false},
    [SMTPD_REPLY_NO_STORAGE] = {452, "4.3.1", "Insufficient system storage", false},
    [SMTPD_REPLY_QUEUE_FULL] = {452, "4.3.1", "Insufficient system storage: mail queue full",
                                false},
    [SMTPD_REPLY_TRY_AGAIN] = {451, "4.3.0", "Error: queue not available, try again later", false},
    [SMTPD_REPLY_LOCAL_ERROR] = {451, "4.3.0", "Error: local error in processing", false},
};

/* Error to reply, most severe first (Postfix cleanup_strerror.c order). */
static const struct {
    int err;
    enum smtpd_reply_id reply;
} smtpd_reply_errors[] = {
    {HAMR_ESHUTDOWN, SMTPD_REPLY_SHUTDOWN},        {HAMR_EDRAINING, SMTPD_REPLY_DRAINING},
    {HAMR_ENOSPACE, SMTPD_REPLY_NO_STORAGE},       {HAMR_EQUEUEFULL, SMTPD_REPLY_QUEUE_FULL},
    {HAMR_ENOMEM, SMTPD_REPLY_LOCAL_ERROR},        {HAMR_ENOTLEADER, SMTPD_REPLY_TRY_AGAIN},
    {HAMR_ELEADERSHIPLOST, SMTPD_REPLY_TRY_AGAIN}, {HAMR_ETIMEDOUT, SMTPD_REPLY_TRY_AGAIN},
    {HAMR_ENOQUORUM, SMTPD_REPLY_TRY_AGAIN},       {HAMR_EBUSY, SMTPD_REPLY_TRY_AGAIN},
    {HAMR_ECORRUPT, SMTPD_REPLY_TRY_AGAIN},
};

/* smtpd_reply_get - the row for id. */
const struct smtpd_reply *smtpd_reply_get(enum smtpd_reply_id id)
{
    HAMR_ASSERT((int)id >= 0 && id < SMTPD_REPLY_COUNT);
    return &smtpd_reply_table[id];
}

/* smtpd_reply_put - append n bytes of p to out at *pos, keeping room for CRLF and NUL. */
static void smtpd_reply_put(char *out, size_t outlen, size_t *pos, const char *p, size_t n)
{
    size_t room = outlen - 3 - *pos; /* CR, LF, NUL */
    if (n > room)
        n = room;
    memcpy(out + *pos, p, n);
    *pos += n;
}

/* smtpd_reply_format - build one reply line for id, CRLF terminated. */
size_t smtpd_reply_format(enum smtpd_reply_id id, const char *arg, char *out, size_t outlen)
{
    const struct smtpd_reply *r = smtpd_reply_get(id);
    char head[16];
    size_t pos = 0;

    HAMR_ASSERT(outlen >= 16);
    int n = snprintf(head, sizeof(head), "%03d%s%s ", r->code, r->esc[0] ? " " : "", r->esc);
    HAMR_ASSERT(n > 0 && (size_t)n < sizeof(head));
    smtpd_reply_put(out, outlen, &pos, head, (size_t)n);

    const char *mark = strstr(r->text, "%s");
    if (mark == NULL) {
        smtpd_reply_put(out, outlen, &pos, r->text, strlen(r->text));
    } else {
        if (arg == NULL)
            arg = "";
        smtpd_reply_put(out, outlen, &pos, r->text, (size_t)(mark - r->text));
        smtpd_reply_put(out, outlen, &pos, arg, strlen(arg));
        smtpd_reply_put(out, outlen, &pos, mark + 2, strlen(mark + 2));
    }
    out[pos++] = '\r';
    out[pos++] = '\n';
    out[pos] = '\0';
    return pos;
}

/* smtpd_reply_for_error - map a HAMR_E* code to its reply. */
enum smtpd_reply_id smtpd_reply_for_error(int err)
{
    for (size_t i = 0; i < HAMR_ARRAY_LEN(smtpd_reply_errors); i++)
        if (smtpd_reply_errors[i].err == err)
            return smtpd_reply_errors[i].reply;
    return SMTPD_REPLY_TRY_AGAIN;
}
