// gcc: -pthread
/* held_conns: the main thread opens PATH, then NTHREADS threads each open it: a
 * thread's first mediated call makes its own broker connection. Every thread waits
 * until all have opened, so that all the connections are held at once, then opens
 * PATH again. Then the main thread opens PATH once more.
 *
 *   held_conns PATH
 *
 * Prints "ok=N other=N" (opens that succeeded and those that did not), then
 * "ring=yes" or "ring=no": whether the main thread, after its last open, has an
 * event ring mapped (memfd:hermes-ring in /proc/self/maps).
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define NTHREADS 40

static const char *path;
static pthread_barrier_t all_connected;
static int ok, other;
static pthread_mutex_t counts = PTHREAD_MUTEX_INITIALIZER;

static void open_once(void) {
    int fd = open(path, O_RDONLY);
    pthread_mutex_lock(&counts);
    if (fd >= 0) ok++;
    else other++;
    pthread_mutex_unlock(&counts);
    if (fd >= 0) close(fd);
}

static void *worker(void *arg) {
    (void)arg;
    open_once();
    pthread_barrier_wait(&all_connected);
    open_once();
    return NULL;
}

static int ring_mapped(void) {
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    while (maps && fgets(line, sizeof line, maps))
        found |= strstr(line, "hermes-ring") != NULL;
    if (maps) fclose(maps);
    return found;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2) {
        fprintf(stderr, "usage: held_conns PATH\n");
        return 2;
    }
    path = argv[1];
    open_once();
    pthread_barrier_init(&all_connected, NULL, NTHREADS);
    pthread_t tids[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        if (pthread_create(&tids[i], NULL, worker, NULL) != 0) return 1;
    for (int i = 0; i < NTHREADS; i++) pthread_join(tids[i], NULL);
    open_once();
    printf("ok=%d other=%d\n", ok, other);
    printf("ring=%s\n", ring_mapped() ? "yes" : "no");
    return other == 0 ? 0 : 1;
}
