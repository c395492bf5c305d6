/*
 * hamr-passwd.c - print a line for the SMTP AUTH credentials file
 * ([smtpd] auth_file):
 *
 *   hamr-passwd [-i ITERATIONS] USER < password
 *
 * The password is the first line of standard input (without its line end),
 * so it never shows in the process list or the shell history. The output is
 * "USER:$pbkdf2-sha256$ITERATIONS$SALT$HASH" with 16 fresh random salt
 * octets; append it to the file and send hamrd SIGHUP.
 *
 * Exit status: 0 done; 1 no password or hashing failed; 2 bad usage.
 *
 * Security: the password buffer is wiped before exit; nothing but the hash
 * is printed.
 *
 * Owns: nothing lasting. May call: net/smtpd_auth (the hash), util.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "util/err.h"
#include "net/smtpd_auth.h"

/* hamr_passwd_usage - the synopsis on stderr; exit status 2. */
static int hamr_passwd_usage(void)
{
    fprintf(stderr,
            "usage: hamr-passwd [-i ITERATIONS] USER < password\n"
            "  ITERATIONS: %d to %d (default %d)\n",
            SMTPD_AUTH_ITERATIONS_MIN, SMTPD_AUTH_ITERATIONS_MAX, SMTPD_AUTH_ITERATIONS);
    return 2;
}

int main(int argc, char **argv)
{
    unsigned long iterations = SMTPD_AUTH_ITERATIONS;
    int i = 1;

    if (i + 1 < argc && strcmp(argv[i], "-i") == 0) {
        char *end;
        iterations = strtoul(argv[i + 1], &end, 10);
        if (*argv[i + 1] == '\0' || *end != '\0' || iterations < SMTPD_AUTH_ITERATIONS_MIN ||
            iterations > SMTPD_AUTH_ITERATIONS_MAX)
            return hamr_passwd_usage();
        i += 2;
    }
    if (i + 1 != argc || argv[i][0] == '-')
        return hamr_passwd_usage();
    const char *user = argv[i];
    if (!smtpd_auth_user_ok(user, strlen(user))) {
        fprintf(stderr,
                "hamr-passwd: bad user name (1-%d octets, no space, control "
                "character or ':')\n",
                SMTPD_AUTH_USER_MAX);
        return 2;
    }

    char pass[SMTPD_AUTH_PASS_MAX + 2];
    if (fgets(pass, sizeof(pass), stdin) == NULL) {
        fprintf(stderr, "hamr-passwd: no password on standard input\n");
        return 1;
    }
    size_t len = strlen(pass);
    if (len > 0 && pass[len - 1] == '\n')
        pass[--len] = '\0';
    else if (len > SMTPD_AUTH_PASS_MAX) {
        OPENSSL_cleanse(pass, sizeof(pass));
        fprintf(stderr, "hamr-passwd: password longer than %d octets\n", SMTPD_AUTH_PASS_MAX);
        return 1;
    }
    if (len > 0 && pass[len - 1] == '\r')
        pass[--len] = '\0';
    if (len == 0) {
        fprintf(stderr, "hamr-passwd: empty password\n");
        return 1;
    }

    char line[SMTPD_AUTH_LINE_MAX + 1];
    int rc = smtpd_auth_hash_line(user, pass, len, (unsigned)iterations, line, sizeof(line));
    OPENSSL_cleanse(pass, sizeof(pass));
    if (rc != 0) {
        fprintf(stderr, "hamr-passwd: %s\n", hamr_strerror(rc));
        return 1;
    }
    printf("%s\n", line);
    return fflush(stdout) == 0 ? 0 : 1;
}
