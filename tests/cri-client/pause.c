/* The sandbox's first process for the CRI tests: holds the pod's namespaces open
 * until the runtime stops it, reaps orphans, exits on SIGINT/SIGTERM. Built with
 * `gcc -static` by xtask (no image registry is reachable here). */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction term = { .sa_handler = stop }, child = { .sa_handler = reap };
    sigaction(SIGINT, &term, 0);
    sigaction(SIGTERM, &term, 0);
    sigaction(SIGCHLD, &child, 0);
    for (;;) pause();
}
