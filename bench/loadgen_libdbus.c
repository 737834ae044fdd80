/* libdbus load generator for ipcproxy's benchmark.
 *
 * Keeps CONC calls of org.bench.Echo.Echo(ay) outstanding on one connection
 * (the shared harness's echo_server answers them), for a warm-up and then a
 * timed window, and prints one JSON line with throughput and latency.
 *
 * libdbus authenticates step by step (it waits for each SASL answer instead
 * of pipelining), so this client also works through Debian's
 * xdg-dbus-proxy 0.1.4, which rejects sd-bus clients.
 *
 *   loadgen_libdbus -a ADDR [-c CONC] [-s BYTES] [-d SECS] [-w SECS] [-D DEST]
 */
#define _GNU_SOURCE
#include <dbus/dbus.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

struct slot {
    uint64_t sent_at;
};

static DBusConnection *conn;
static const char *dest = "org.bench.Echo";
static unsigned char *payload;
static int payload_len = 64;
static struct slot *slots;
static uint64_t window_start, window_end;
static uint64_t n_outstanding, n_sent, n_replies, n_errors, n_bad, n_in_window;
static uint64_t *samples;
static size_t n_samples, cap_samples;
static int stop_issuing;

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_reply(DBusPendingCall *pending, void *data);

static int send_call(uintptr_t slot) {
    DBusMessage *call = dbus_message_new_method_call(dest, "/org/bench/Echo", "org.bench.Echo", "Echo");
    DBusPendingCall *pending = NULL;
    if (call == NULL)
        return -1;
    const unsigned char *bytes = payload;
    if (!dbus_message_append_args(call, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE, &bytes, payload_len, DBUS_TYPE_INVALID)) {
        dbus_message_unref(call);
        return -1;
    }
    slots[slot].sent_at = mono_ns();
    if (!dbus_connection_send_with_reply(conn, call, &pending, 60000) || pending == NULL) {
        dbus_message_unref(call);
        return -1;
    }
    dbus_message_unref(call);
    if (!dbus_pending_call_set_notify(pending, on_reply, (void *)slot, NULL)) {
        dbus_pending_call_unref(pending);
        return -1;
    }
    n_outstanding++;
    n_sent++;
    return 0;
}

static void keep_sample(uint64_t ns) {
    if (n_samples == cap_samples) {
        cap_samples = cap_samples ? cap_samples * 2 : 65536;
        samples = realloc(samples, cap_samples * sizeof(*samples));
        if (samples == NULL) {
            fprintf(stderr, "loadgen_libdbus: out of memory\n");
            exit(1);
        }
    }
    samples[n_samples++] = ns;
}

static void on_reply(DBusPendingCall *pending, void *data) {
    uintptr_t slot = (uintptr_t)data;
    uint64_t now = mono_ns();
    DBusMessage *reply = dbus_pending_call_steal_reply(pending);
    dbus_pending_call_unref(pending);
    n_outstanding--;
    n_replies++;
    if (reply == NULL || dbus_message_get_type(reply) != DBUS_MESSAGE_TYPE_METHOD_RETURN) {
        if (n_errors++ < 3)
            fprintf(stderr, "loadgen_libdbus: error reply: %s\n",
                    reply ? dbus_message_get_error_name(reply) : "(none)");
    } else {
        const unsigned char *echoed = NULL;
        int len = -1;
        if (!dbus_message_get_args(reply, NULL, DBUS_TYPE_ARRAY, DBUS_TYPE_BYTE, &echoed, &len, DBUS_TYPE_INVALID) ||
            len != payload_len)
            n_bad++;
    }
    if (reply)
        dbus_message_unref(reply);
    if (now >= window_start && now < window_end)
        n_in_window++;
    uint64_t sent_at = slots[slot].sent_at;
    if (sent_at >= window_start && sent_at < window_end)
        keep_sample(now - sent_at);
    if (now < window_end && !stop_issuing && send_call(slot) < 0) {
        fprintf(stderr, "loadgen_libdbus: cannot send a call\n");
        stop_issuing = 1;
    }
}

static int by_value(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

int main(int argc, char **argv) {
    const char *address = NULL;
    int conc = 1, opt;
    double window_s = 2.0, warm_s = 0.3;
    while ((opt = getopt(argc, argv, "a:c:s:d:w:D:")) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'c': conc = atoi(optarg); break;
        case 's': payload_len = atoi(optarg); break;
        case 'd': window_s = atof(optarg); break;
        case 'w': warm_s = atof(optarg); break;
        case 'D': dest = optarg; break;
        default: return 2;
        }
    }
    if (address == NULL || conc < 1 || payload_len < 0) {
        fprintf(stderr, "usage: %s -a ADDR [-c CONC] [-s BYTES] [-d SECS] [-w SECS] [-D DEST]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    payload = malloc(payload_len ? payload_len : 1);
    memset(payload, 0xab, payload_len);
    slots = calloc(conc, sizeof(*slots));

    DBusError err;
    dbus_error_init(&err);
    conn = dbus_connection_open_private(address, &err);
    if (conn == NULL || !dbus_bus_register(conn, &err)) {
        fprintf(stderr, "loadgen_libdbus: %s: %s\n", address, err.message ? err.message : "cannot connect");
        return 1;
    }
    dbus_connection_set_exit_on_disconnect(conn, FALSE);

    double cpu0 = cpu_seconds();
    uint64_t begin = mono_ns();
    window_start = begin + (uint64_t)(warm_s * 1e9);
    window_end = window_start + (uint64_t)(window_s * 1e9);
    uint64_t give_up = window_end + 60ull * 1000000000ull;
    int failed = 0;
    for (int i = 0; i < conc; i++) {
        if (send_call((uintptr_t)i) < 0) {
            fprintf(stderr, "loadgen_libdbus: cannot send a call\n");
            return 1;
        }
    }
    while (n_outstanding > 0) {
        if (!dbus_connection_read_write_dispatch(conn, 1000)) {
            fprintf(stderr, "loadgen_libdbus: disconnected\n");
            failed = 1;
            break;
        }
        if (mono_ns() > give_up) {
            fprintf(stderr, "loadgen_libdbus: timed out waiting for replies\n");
            failed = 1;
            break;
        }
    }
    uint64_t finish = mono_ns();
    double cpu = cpu_seconds() - cpu0;

    qsort(samples, n_samples, sizeof(*samples), by_value);
    double p50 = n_samples ? samples[n_samples / 2] / 1e3 : -1;
    double p99 = n_samples ? samples[(size_t)(n_samples * 0.99) < n_samples ? (size_t)(n_samples * 0.99) : n_samples - 1] / 1e3 : -1;
    double sum = 0;
    for (size_t i = 0; i < n_samples; i++)
        sum += samples[i];
    printf("{\"client\":\"libdbus\",\"conc\":%d,\"size\":%d,\"window_s\":%.3f,\"cps\":%.1f,\"p50_us\":%.1f,"
           "\"p99_us\":%.1f,\"mean_us\":%.1f,\"nlat\":%zu,\"sent\":%llu,\"replies\":%llu,\"errors\":%llu,"
           "\"bad_size\":%llu,\"cpu_s\":%.3f,\"wall_s\":%.3f,\"failed\":%d}\n",
           conc, payload_len, window_s, n_in_window / window_s, p50, p99, n_samples ? sum / n_samples / 1e3 : -1,
           n_samples, (unsigned long long)n_sent, (unsigned long long)n_replies, (unsigned long long)n_errors,
           (unsigned long long)n_bad, cpu, (finish - begin) / 1e9, failed);
    dbus_connection_close(conn);
    dbus_connection_unref(conn);
    return failed || n_errors || n_bad ? 1 : 0;
}
