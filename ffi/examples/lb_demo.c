/*
 * lb_demo: balance plain TCP requests with lb's C ABI.
 *
 *   lb_demo <target> <options_json> <requests> <threads>
 *
 * Each request: pick an endpoint, connect to it, send "ping\n", read one line, and report the
 * outcome ("ok" is a success, anything else a failure) with the latency measured here. Prints how
 * many requests each endpoint served, for the test suite (ffi/tests/c_example.rs) to check.
 *
 * It also walks the error contract once (NULL arguments, malformed JSON, a token reported twice,
 * an unknown token) and exits with status 2 if the library breaks it.
 *
 * Build (the tests do this): cc -I ffi/include lb_demo.c -L<dir of liblb_ffi.so> -llb_ffi -lpthread
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lb.h"

#define MAX_ENDPOINTS 16

struct tally {
    char addr[MAX_ENDPOINTS][LB_ADDR_LEN];
    long served[MAX_ENDPOINTS];
    long failed[MAX_ENDPOINTS];
    int n;
    long unavailable;
};

struct worker {
    const lb_balancer *balancer;
    long requests;
    struct tally tally;
};

static void die_contract(const char *what, lb_status got, lb_status want) {
    char msg[256];
    lb_last_error_message(msg, sizeof msg);
    fprintf(stderr, "contract broken: %s returned %d, expected %d (%s)\n", what, (int)got, (int)want, msg);
    exit(2);
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* One request over plain TCP: 1 when the backend answered "ok". */
static int request(const lb_pick *pick) {
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, pick->ip, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(pick->port);
        len = sizeof *v4;
    } else if (inet_pton(AF_INET6, pick->ip, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(pick->port);
        len = sizeof *v6;
    } else {
        return 0;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&ss, len) == 0 && write(fd, "ping\n", 5) == 5) {
        char buf[16];
        ssize_t got = 0, r;
        while (got < (ssize_t)sizeof buf - 1 && (r = read(fd, buf + got, sizeof buf - 1 - got)) > 0) {
            got += r;
            if (memchr(buf, '\n', (size_t)got)) break;
        }
        buf[got > 0 ? got : 0] = 0;
        ok = strncmp(buf, "ok\n", 3) == 0;
    }
    close(fd);
    return ok;
}

static void count(struct tally *t, const char *addr, int ok) {
    int i;
    for (i = 0; i < t->n; i++)
        if (strcmp(t->addr[i], addr) == 0) break;
    if (i == t->n) {
        if (t->n == MAX_ENDPOINTS) return;
        snprintf(t->addr[t->n++], LB_ADDR_LEN, "%s", addr);
    }
    t->served[i]++;
    if (!ok) t->failed[i]++;
}

static void *run(void *arg) {
    struct worker *w = arg;
    for (long i = 0; i < w->requests; i++) {
        lb_pick pick;
        lb_status s = lb_balancer_pick(w->balancer, NULL, 0, &pick);
        if (s == LB_ERR_UNAVAILABLE) {
            w->tally.unavailable++;
            continue;
        }
        if (s != LB_OK) die_contract("lb_balancer_pick", s, LB_OK);
        int64_t start = now_us();
        int ok = request(&pick);
        s = lb_balancer_report(w->balancer, pick.token, ok ? LB_OUTCOME_SUCCESS : LB_OUTCOME_FAILURE,
                               now_us() - start);
        if (s != LB_OK) die_contract("lb_balancer_report", s, LB_OK);
        count(&w->tally, pick.addr, ok);
    }
    return NULL;
}

static void check_error_contract(const lb_balancer *b) {
    lb_balancer *nb = NULL;
    lb_status s;
    if ((s = lb_balancer_new(NULL, NULL, &nb)) != LB_ERR_NULL_ARGUMENT)
        die_contract("lb_balancer_new(NULL target)", s, LB_ERR_NULL_ARGUMENT);
    if ((s = lb_balancer_new("static:///127.0.0.1:1", "{\"policy\":", &nb)) != LB_ERR_INVALID_OPTIONS)
        die_contract("lb_balancer_new(malformed JSON)", s, LB_ERR_INVALID_OPTIONS);
    if ((s = lb_balancer_new("static:///127.0.0.1:1", "\xff\xfe", &nb)) != LB_ERR_INVALID_UTF8)
        die_contract("lb_balancer_new(invalid UTF-8)", s, LB_ERR_INVALID_UTF8);
    if ((s = lb_balancer_new("nowhere", NULL, &nb)) != LB_ERR_INVALID_TARGET)
        die_contract("lb_balancer_new(bad target)", s, LB_ERR_INVALID_TARGET);
    if (nb != NULL) die_contract("failed lb_balancer_new wrote *out", LB_OK, LB_ERR_INVALID_TARGET);
    size_t need = lb_last_error_message(NULL, 0);
    char *msg = malloc(need + 1);
    if (!msg || lb_last_error_message(msg, need + 1) != need || strlen(msg) != need)
        die_contract("lb_last_error_message", LB_OK, LB_OK);
    printf("last_error %s\n", msg);
    free(msg);

    if ((s = lb_balancer_pick(b, NULL, 0, NULL)) != LB_ERR_NULL_ARGUMENT)
        die_contract("lb_balancer_pick(NULL out)", s, LB_ERR_NULL_ARGUMENT);
    if ((s = lb_balancer_pick(NULL, NULL, 0, NULL)) != LB_ERR_NULL_ARGUMENT)
        die_contract("lb_balancer_pick(NULL balancer)", s, LB_ERR_NULL_ARGUMENT);
    lb_pick pick;
    const char *key = "user-42";
    if ((s = lb_balancer_pick(b, (const uint8_t *)key, strlen(key), &pick)) != LB_OK)
        die_contract("lb_balancer_pick(key)", s, LB_OK);
    if ((s = lb_balancer_report(b, pick.token, 7, -1)) != LB_ERR_INVALID_ARGUMENT)
        die_contract("lb_balancer_report(bad outcome)", s, LB_ERR_INVALID_ARGUMENT);
    if ((s = lb_balancer_report(b, pick.token, LB_OUTCOME_CANCELLED, -1)) != LB_OK)
        die_contract("lb_balancer_report(first)", s, LB_OK);
    if ((s = lb_balancer_report(b, pick.token, LB_OUTCOME_SUCCESS, -1)) != LB_ERR_TOKEN_SPENT)
        die_contract("lb_balancer_report(twice)", s, LB_ERR_TOKEN_SPENT);
    if ((s = lb_balancer_report(b, 12345, LB_OUTCOME_SUCCESS, -1)) != LB_ERR_UNKNOWN_TOKEN)
        die_contract("lb_balancer_report(unknown)", s, LB_ERR_UNKNOWN_TOKEN);

    lb_registration *reg = NULL;
    if ((s = lb_registration_new("static:///127.0.0.1:1", "{\"addr\":\"127.0.0.1:1\"}", &reg)) != LB_ERR_INVALID_TARGET)
        die_contract("lb_registration_new(static)", s, LB_ERR_INVALID_TARGET);
    lb_registration_free(NULL);
    lb_balancer_free(NULL);
    lb_string_free(NULL);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s <target> <options_json> <requests> <threads>\n", argv[0]);
        return 1;
    }
    long requests = atol(argv[3]);
    int threads = atoi(argv[4]);
    if (threads < 1 || threads > 64 || requests < 0) {
        fprintf(stderr, "bad requests/threads\n");
        return 1;
    }
    printf("version %s\n", lb_version());

    lb_balancer *b = NULL;
    lb_status s = lb_balancer_new(argv[1], argv[2], &b);
    if (s != LB_OK) {
        char msg[512];
        lb_last_error_message(msg, sizeof msg);
        fprintf(stderr, "lb_balancer_new: %d: %s\n", (int)s, msg);
        return 1;
    }
    if ((s = lb_balancer_wait_ready(b, 5000)) != LB_OK) {
        char msg[512];
        lb_last_error_message(msg, sizeof msg);
        fprintf(stderr, "lb_balancer_wait_ready: %d: %s\n", (int)s, msg);
        lb_balancer_free(b);
        return 1;
    }
    check_error_contract(b);

    struct worker *w = calloc((size_t)threads, sizeof *w);
    pthread_t *tid = calloc((size_t)threads, sizeof *tid);
    if (!w || !tid) return 1;
    for (int i = 0; i < threads; i++) {
        w[i].balancer = b;
        w[i].requests = requests / threads + (i < requests % threads ? 1 : 0);
        if (pthread_create(&tid[i], NULL, run, &w[i]) != 0) return 1;
    }
    struct tally total;
    memset(&total, 0, sizeof total);
    for (int i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        for (int j = 0; j < w[i].tally.n; j++)
            for (long k = 0; k < w[i].tally.served[j]; k++)
                count(&total, w[i].tally.addr[j], k >= w[i].tally.failed[j]);
        total.unavailable += w[i].tally.unavailable;
    }
    for (int i = 0; i < total.n; i++)
        printf("served %s %ld failed %ld\n", total.addr[i], total.served[i], total.failed[i]);
    printf("unavailable %ld\n", total.unavailable);

    char *json = NULL;
    if ((s = lb_balancer_endpoints(b, &json)) != LB_OK) die_contract("lb_balancer_endpoints", s, LB_OK);
    printf("endpoints %s\n", json);
    lb_string_free(json);

    free(w);
    free(tid);
    lb_balancer_free(b);
    return 0;
}
