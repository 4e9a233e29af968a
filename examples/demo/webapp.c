/* A tiny test web service for the deploy tests, built static (`gcc -static`) into a
 * FROM-scratch image. GET /healthz answers 200 unless HEALTHY=0 (then 500); any other
 * path answers "version=$VERSION host=<hostname>"; GET /secret/NAME answers the content of
 * /run/secrets/NAME (so a test can check what a Docker secret delivered). With
 * STARTUP_SECONDS=N it answers every request 503 for its first N seconds (a slow start).
 * `webapp probe` is its own health check (an image HEALTHCHECK needs no shell or curl): it
 * asks 127.0.0.1:$PORT/healthz and exits 0 on 200, 1 otherwise. On SIGTERM it keeps serving for
 * DRAIN_SECONDS (default 2) so requests still in flight or routed by a stale DNS answer
 * finish, then exits — what a well-behaved service does behind a proxy. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t terminating = 0;
static void on_term(int sig) { (void)sig; terminating = 1; }

static const char *env_or(const char *k, const char *d) {
    const char *v = getenv(k);
    return (v && *v) ? v : d;
}

static void respond(int fd, int status, const char *reason, const char *body) {
    char buf[1024];
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s",
                     status, reason, strlen(body), body);
    if (n > 0) {
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = write(fd, buf + off, n - off);
            if (w <= 0) break;
            off += w;
        }
    }
}

static time_t started_at;
static int startup_seconds;

static void serve(int fd, const char *version, int healthy, const char *host) {
    char req[4096];
    size_t len = 0;
    while (len < sizeof req - 1) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 5000) <= 0) return;
        ssize_t r = read(fd, req + len, sizeof req - 1 - len);
        if (r <= 0) return;
        len += r;
        req[len] = 0;
        if (strstr(req, "\r\n\r\n")) break;
    }
    char body[512];
    if (time(NULL) < started_at + startup_seconds) {
        respond(fd, 503, "Service Unavailable", "starting\n");
        return;
    }
    if (strncmp(req, "GET /healthz", 12) == 0) {
        if (healthy) respond(fd, 200, "OK", "ok\n");
        else respond(fd, 500, "Internal Server Error", "unhealthy: HEALTHY=0\n");
        return;
    }
    if (strncmp(req, "GET /secret/", 12) == 0) {
        char name[128] = {0}, path[192], content[400] = {0};
        size_t i = 0;
        for (const char *p = req + 12; i < sizeof name - 1 && *p && *p != ' '; p++, i++) {
            char c = *p;
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.'))
                break;
            name[i] = c;
        }
        snprintf(path, sizeof path, "/run/secrets/%s", name);
        FILE *f = fopen(path, "r");
        if (!f) {
            respond(fd, 404, "Not Found", "no such secret\n");
            return;
        }
        size_t n = fread(content, 1, sizeof content - 1, f);
        content[n] = 0;
        fclose(f);
        respond(fd, 200, "OK", content);
        return;
    }
    snprintf(body, sizeof body, "version=%s host=%s\n", version, host);
    respond(fd, 200, "OK", body);
}

static int probe(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) return 1;
    const char *req = "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (write(s, req, strlen(req)) < 0) return 1;
    char buf[64] = {0};
    ssize_t n = read(s, buf, sizeof buf - 1);
    close(s);
    return (n > 12 && strncmp(buf + 9, "200", 3) == 0) ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "probe") == 0) return probe(atoi(env_or("PORT", "8080")));
    started_at = time(NULL);
    startup_seconds = atoi(env_or("STARTUP_SECONDS", "0"));
    const char *version = env_or("VERSION", "0");
    int healthy = strcmp(env_or("HEALTHY", "1"), "0") != 0;
    int port = atoi(env_or("PORT", "8080"));
    int drain = atoi(env_or("DRAIN_SECONDS", "2"));
    char host[256] = "unknown";
    gethostname(host, sizeof host - 1);
    signal(SIGTERM, on_term);
    signal(SIGPIPE, SIG_IGN);

    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 128) != 0) {
        perror("listen");
        return 1;
    }
    fprintf(stderr, "webapp version=%s healthy=%d listening on %d\n", version, healthy, port);
    time_t stop_at = 0;
    for (;;) {
        if (terminating && !stop_at) stop_at = time(NULL) + drain;
        if (stop_at && time(NULL) >= stop_at) break;
        struct pollfd p = {s, POLLIN, 0};
        int r = poll(&p, 1, 200);
        if (r < 0 && errno != EINTR) break;
        if (r <= 0) continue;
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        serve(c, version, healthy, host);
        close(c);
    }
    fprintf(stderr, "webapp: drained, exiting\n");
    return 0;
}
