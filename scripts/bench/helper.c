/* Tiny timing helpers for scripts/bench.sh (compiled once with cc into the work dir).
 *   helper stat LISTFILE ROOT      lstat every path (newline-separated, relative to ROOT)
 *   helper create DIR N SIZE        create N files of SIZE bytes in DIR (must exist)
 *   helper readdir DIR              count entries via getdents (no stat), print the count
 *   helper probe DIR NAME STOPFILE  until STOPFILE exists, repeat one round of small operations
 *                                   in DIR: stat NAME, stat a missing name, list DIR, create and
 *                                   remove a file; print the slowest round in seconds and the
 *                                   number of rounds
 *   helper append FILE              stat FILE, then time opening it O_APPEND, writing one byte
 *                                   and closing it; print the seconds
 *   helper chmod FILE MODE          stat FILE, then time chmod(FILE, MODE) (octal); print the
 *                                   seconds
 * (append and chmod time the copy-up a first change of a lower file makes, without the start
 * of a process around it: a clone on XFS takes well under the 2 ms a process start does.)
 * Prints a count on stdout; exits 1 if any operation failed. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: helper stat|create|readdir|probe|append|chmod ...\n"); return 2; }
    if (!strcmp(argv[1], "stat") && argc == 4) {
        FILE *f = fopen(argv[2], "r");
        if (!f) { perror(argv[2]); return 2; }
        int root = open(argv[3], O_RDONLY | O_DIRECTORY);
        if (root < 0) { perror(argv[3]); return 2; }
        char *line = NULL; size_t cap = 0; ssize_t n; long ok = 0, bad = 0;
        struct stat st;
        while ((n = getline(&line, &cap, f)) > 0) {
            if (line[n - 1] == '\n') line[--n] = 0;
            if (!n) continue;
            if (fstatat(root, line, &st, AT_SYMLINK_NOFOLLOW) == 0) ok++; else bad++;
        }
        printf("%ld\n", ok);
        if (bad) fprintf(stderr, "helper stat: %ld failures\n", bad);
        return bad ? 1 : 0;
    }
    if (!strcmp(argv[1], "create") && argc == 5) {
        long n = atol(argv[3]), size = atol(argv[4]);
        char *buf = calloc(1, size ? size : 1); memset(buf, 'x', size);
        int dir = open(argv[2], O_RDONLY | O_DIRECTORY);
        if (dir < 0) { perror(argv[2]); return 2; }
        char name[64]; long bad = 0;
        for (long i = 0; i < n; i++) {
            snprintf(name, sizeof name, "f%06ld", i);
            int fd = openat(dir, name, O_WRONLY | O_CREAT | O_EXCL, 0644);
            if (fd < 0) { bad++; continue; }
            if (size && write(fd, buf, size) != size) bad++;
            if (close(fd)) bad++;
        }
        printf("%ld\n", n - bad);
        return bad ? 1 : 0;
    }
    if (!strcmp(argv[1], "readdir") && argc == 3) {
        DIR *d = opendir(argv[2]);
        if (!d) { perror(argv[2]); return 2; }
        long c = 0; struct dirent *e;
        while ((e = readdir(d))) if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) c++;
        closedir(d);
        printf("%ld\n", c);
        return 0;
    }
    if (!strcmp(argv[1], "probe") && argc == 5) {
        int dir = open(argv[2], O_RDONLY | O_DIRECTORY);
        if (dir < 0) { perror(argv[2]); return 2; }
        struct stat st; char name[64]; long rounds = 0, bad = 0; double worst = 0;
        while (access(argv[4], F_OK) != 0) {
            double t0 = now();
            if (fstatat(dir, argv[3], &st, AT_SYMLINK_NOFOLLOW)) bad++;
            snprintf(name, sizeof name, "probe-missing-%ld", rounds);
            if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0) bad++;
            DIR *d = opendir(argv[2]);
            if (!d) bad++;
            else { while (readdir(d)) ; closedir(d); }
            snprintf(name, sizeof name, "probe-%ld", rounds);
            int fd = openat(dir, name, O_WRONLY | O_CREAT | O_EXCL, 0644);
            if (fd < 0 || close(fd) || unlinkat(dir, name, 0)) bad++;
            double t = now() - t0;
            if (t > worst) worst = t;
            rounds++;
        }
        printf("%.6f %ld\n", worst, rounds);
        if (bad) fprintf(stderr, "helper probe: %ld failures\n", bad);
        return bad ? 1 : 0;
    }
    if ((!strcmp(argv[1], "append") && argc == 3) || (!strcmp(argv[1], "chmod") && argc == 4)) {
        struct stat st;
        if (stat(argv[2], &st)) { perror(argv[2]); return 2; }
        double t0 = now();
        if (argv[1][0] == 'a') {
            int fd = open(argv[2], O_WRONLY | O_APPEND);
            if (fd < 0 || write(fd, "x", 1) != 1 || close(fd)) { perror(argv[2]); return 1; }
        } else if (chmod(argv[2], (mode_t)strtol(argv[3], NULL, 8))) {
            perror(argv[2]);
            return 1;
        }
        printf("%.6f\n", now() - t0);
        return 0;
    }
    fprintf(stderr, "helper: bad arguments\n");
    return 2;
}
