// gcc: -pthread
/* threads: NTHREADS threads, each opening ALLOWED and DENIED alternately, PER_THREAD
 * opens in all, all threads released at once.
 *
 *   threads ALLOWED DENIED
 *
 * Prints one line per thread, "thread I ok=N eacces=N other=N", then
 * "total ok=N eacces=N other=N". "other" counts results that are neither a
 * successful open of ALLOWED nor EACCES for DENIED.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#define NTHREADS 8
#define PER_THREAD 1250

static const char *allowed, *denied;
static pthread_barrier_t start;

struct counts {
    int ok, eacces, other;
};

static void *worker(void *arg) {
    struct counts *c = arg;
    pthread_barrier_wait(&start);
    for (int i = 0; i < PER_THREAD; i++) {
        int want_ok = i % 2 == 0;
        int fd = open(want_ok ? allowed : denied, O_RDONLY);
        int err = errno;
        if (fd >= 0) close(fd);
        if (want_ok && fd >= 0) c->ok++;
        else if (!want_ok && fd < 0 && err == EACCES) c->eacces++;
        else c->other++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: threads ALLOWED DENIED\n");
        return 2;
    }
    allowed = argv[1];
    denied = argv[2];
    pthread_t tids[NTHREADS];
    struct counts counts[NTHREADS] = {{0, 0, 0}};
    pthread_barrier_init(&start, NULL, NTHREADS);
    for (int i = 0; i < NTHREADS; i++) pthread_create(&tids[i], NULL, worker, &counts[i]);
    struct counts total = {0, 0, 0};
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(tids[i], NULL);
        printf("thread %d ok=%d eacces=%d other=%d\n", i, counts[i].ok, counts[i].eacces, counts[i].other);
        total.ok += counts[i].ok;
        total.eacces += counts[i].eacces;
        total.other += counts[i].other;
    }
    printf("total ok=%d eacces=%d other=%d\n", total.ok, total.eacces, total.other);
    return 0;
}
