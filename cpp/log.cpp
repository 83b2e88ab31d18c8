// log.cpp: the library's log sink (see log.h).
#include "log.h"

#include <mutex>

namespace bitnet {

namespace {
std::mutex g_sink_mutex;
LogSink g_sink;
}  // namespace

void set_log_sink(LogSink sink) {
    std::lock_guard<std::mutex> lock(g_sink_mutex);
    g_sink = std::move(sink);
}

void log_message(LogLevel level, const std::string& msg) {
    LogSink sink;
    {
        std::lock_guard<std::mutex> lock(g_sink_mutex);
        sink = g_sink;
    }
    if (sink) sink(level, msg);
}

}  // namespace bitnet
