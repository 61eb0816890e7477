/*
 * threads: the C ABI's threading contract, exercised from C (ffi/tests/c_threads.rs builds and
 * runs it, natively and under valgrind's helgrind).
 *
 *   threads <target> <rounds>
 *
 * 1. A pick made on one thread is reported on another (tokens are plain integers a caller hands
 *    between threads).
 * 2. Two threads report the same token at the same moment: exactly one gets LB_OK, the other
 *    LB_ERR_TOKEN_SPENT.
 * 3. While two threads pick and report on a long-lived balancer, a third creates, uses and frees
 *    balancers of its own, <rounds> times.
 *
 * Prints "ok <check>" per passed check; exits 1 on the first broken one, saying why.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb.h"

static const char *target;

static void fail(const char *what, lb_status got) {
    char msg[256];
    lb_last_error_message(msg, sizeof msg);
    fprintf(stderr, "broken: %s: status %d (%s)\n", what, (int)got, msg);
    exit(1);
}

static lb_balancer *new_balancer(void) {
    lb_balancer *b = NULL;
    lb_status s = lb_balancer_new(target, "{\"policy\":\"rr\"}", &b);
    if (s != LB_OK) fail("lb_balancer_new", s);
    s = lb_balancer_wait_ready(b, 30000);
    if (s != LB_OK) fail("lb_balancer_wait_ready", s);
    return b;
}

/* Whether the balancer's endpoint JSON says no pick awaits its report. */
static int nothing_pending(const lb_balancer *b) {
    char *json = NULL;
    lb_status s = lb_balancer_endpoints(b, &json);
    if (s != LB_OK) fail("lb_balancer_endpoints", s);
    int none = strstr(json, "\"pending_reports\":0") != NULL;
    lb_string_free(json);
    return none;
}

/* ---- 1. report on another thread ---------------------------------------------------------- */

struct handoff {
    const lb_balancer *b;
    uint64_t token;
    lb_status status;
};

static void *report_it(void *arg) {
    struct handoff *h = arg;
    h->status = lb_balancer_report(h->b, h->token, LB_OUTCOME_SUCCESS, 1000);
    return NULL;
}

static void report_on_another_thread(const lb_balancer *b) {
    lb_pick pick;
    lb_status s = lb_balancer_pick(b, NULL, 0, &pick);
    if (s != LB_OK) fail("pick", s);
    struct handoff h = {b, pick.token, LB_ERR_PANIC};
    pthread_t t;
    if (pthread_create(&t, NULL, report_it, &h) != 0) exit(1);
    pthread_join(t, NULL);
    if (h.status != LB_OK) fail("report from another thread", h.status);
    if (!nothing_pending(b)) fail("the report from another thread released the pick", LB_OK);
    printf("ok report_on_another_thread\n");
}

/* ---- 2. two threads, one token ------------------------------------------------------------ */

struct race {
    const lb_balancer *b;
    uint64_t token;
    pthread_barrier_t *start;
    lb_status status;
};

static void *race_report(void *arg) {
    struct race *r = arg;
    /* Both threads wait until both are here, then report at once. (A pthread barrier rather than
     * a spin on an atomic: helgrind understands the former.) */
    pthread_barrier_wait(r->start);
    r->status = lb_balancer_report(r->b, r->token, LB_OUTCOME_SUCCESS, -1);
    return NULL;
}

static void two_threads_report_one_token(const lb_balancer *b, int rounds) {
    for (int i = 0; i < rounds; i++) {
        lb_pick pick;
        lb_status s = lb_balancer_pick(b, NULL, 0, &pick);
        if (s != LB_OK) fail("pick", s);
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, 2);
        struct race r[2] = {{b, pick.token, &start, LB_ERR_PANIC}, {b, pick.token, &start, LB_ERR_PANIC}};
        pthread_t t[2];
        for (int j = 0; j < 2; j++)
            if (pthread_create(&t[j], NULL, race_report, &r[j]) != 0) exit(1);
        for (int j = 0; j < 2; j++) pthread_join(t[j], NULL);
        pthread_barrier_destroy(&start);
        int ok = (r[0].status == LB_OK) + (r[1].status == LB_OK);
        int spent = (r[0].status == LB_ERR_TOKEN_SPENT) + (r[1].status == LB_ERR_TOKEN_SPENT);
        if (ok != 1 || spent != 1) {
            fprintf(stderr, "broken: one token reported twice at once gave %d and %d\n", (int)r[0].status, (int)r[1].status);
            exit(1);
        }
    }
    if (!nothing_pending(b)) fail("every raced token was released once", LB_OK);
    printf("ok two_threads_report_one_token\n");
}

/* ---- 3. create/free beside picks -------------------------------------------------------- */

/* A flag under a mutex (which helgrind understands), set once by the main thread. */
struct flag {
    pthread_mutex_t lock;
    int set;
};

static int flag_get(struct flag *f) {
    pthread_mutex_lock(&f->lock);
    int v = f->set;
    pthread_mutex_unlock(&f->lock);
    return v;
}

struct picker {
    const lb_balancer *b;
    struct flag *stop;
    long picks;
};

static void *pick_loop(void *arg) {
    struct picker *p = arg;
    while (!flag_get(p->stop)) {
        lb_pick pick;
        lb_status s = lb_balancer_pick(p->b, NULL, 0, &pick);
        if (s != LB_OK) fail("pick beside create/free", s);
        s = lb_balancer_report(p->b, pick.token, LB_OUTCOME_SUCCESS, -1);
        if (s != LB_OK) fail("report beside create/free", s);
        p->picks++;
    }
    return NULL;
}

static void create_and_free_beside_picks(const lb_balancer *shared, int rounds) {
    struct flag stop = {PTHREAD_MUTEX_INITIALIZER, 0};
    struct picker p[2] = {{shared, &stop, 0}, {shared, &stop, 0}};
    pthread_t t[2];
    for (int j = 0; j < 2; j++)
        if (pthread_create(&t[j], NULL, pick_loop, &p[j]) != 0) exit(1);
    for (int i = 0; i < rounds; i++) {
        lb_balancer *own = new_balancer();
        lb_pick pick;
        lb_status s = lb_balancer_pick(own, NULL, 0, &pick);
        if (s != LB_OK) fail("pick on a fresh balancer", s);
        if (i % 2 == 0) {
            s = lb_balancer_report(own, pick.token, LB_OUTCOME_SUCCESS, -1);
            if (s != LB_OK) fail("report on a fresh balancer", s);
        } /* else: freed with the pick unreported, which free releases */
        lb_balancer_free(own);
    }
    pthread_mutex_lock(&stop.lock);
    stop.set = 1;
    pthread_mutex_unlock(&stop.lock);
    for (int j = 0; j < 2; j++) pthread_join(t[j], NULL);
    if (p[0].picks + p[1].picks == 0) {
        fprintf(stderr, "broken: the pickers never picked\n");
        exit(1);
    }
    if (!nothing_pending(shared)) fail("the shared balancer has nothing pending", LB_OK);
    printf("ok create_and_free_beside_picks %ld\n", p[0].picks + p[1].picks);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <target> <rounds>\n", argv[0]);
        return 2;
    }
    target = argv[1];
    int rounds = atoi(argv[2]);
    if (rounds < 1) return 2;
    lb_balancer *b = new_balancer();
    report_on_another_thread(b);
    two_threads_report_one_token(b, rounds);
    create_and_free_beside_picks(b, rounds);
    lb_balancer_free(b);
    return 0;
}
