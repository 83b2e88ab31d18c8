// log.h: library logging. Messages go to a sink that the Python bindings point at the
// `bitnet` logger of Python's logging module; with no sink they are dropped (never printed).
#pragma once

#include <functional>
#include <string>

namespace bitnet {

enum class LogLevel { DEBUG = 10, INFO = 20, WARNING = 30, ERROR = 40 };

using LogSink = std::function<void(LogLevel, const std::string&)>;
void set_log_sink(LogSink sink);
void log_message(LogLevel level, const std::string& msg);

}  // namespace bitnet
