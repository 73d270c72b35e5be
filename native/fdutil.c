// Tiny N-API addon: duplicate / close a file descriptor.
// Node has no API to move a net.Socket between worker threads, but fds are process-wide:
// the main thread dup()s the accepted socket's fd, destroys its own handle (no FIN is sent
// because the dup keeps the connection open) and the shard worker adopts the dup.
#include <node_api.h>
#include <unistd.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

static napi_value throw_errno(napi_env env, const char *what) {
  char msg[128];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(errno));
  napi_throw_error(env, NULL, msg);
  return NULL;
}

static int arg_fd(napi_env env, napi_callback_info info, int32_t *fd) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) return 0;
  return napi_get_value_int32(env, argv[0], fd) == napi_ok;
}

static napi_value js_dup(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!arg_fd(env, info, &fd)) { napi_throw_type_error(env, NULL, "dup(fd: number)"); return NULL; }
  int nfd = dup(fd);
  if (nfd < 0) return throw_errno(env, "dup");
  napi_value out;
  napi_create_int32(env, nfd, &out);
  return out;
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!arg_fd(env, info, &fd)) { napi_throw_type_error(env, NULL, "close(fd: number)"); return NULL; }
  if (close(fd) < 0) return throw_errno(env, "close");
  return NULL;
}

// NAPI_MODULE_INIT is context-aware, so the addon loads in worker threads too.
NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    {"dup", NULL, js_dup, NULL, NULL, NULL, napi_default, NULL},
    {"close", NULL, js_close, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}
