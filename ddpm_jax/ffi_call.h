// One call of an XLA FFI handler, read through XLA's FFI C API (xla/ffi/api/c_api.h) alone.
//
// jaxlib's C++ FFI header (ffi.h) binds a handler's signature with templates, and parsing it took
// most of each kernel's build (about 1.5 s a source, before any of the kernel's own code); the C
// header takes a few milliseconds. A handler is `extern "C" XLA_FFI_Error* name(XLA_FFI_CallFrame*)`
// returning `ddpm_ffi::handle(frame, body)`: handle() answers XLA's metadata query and refuses
// other stages than execution, and `body(Call&)` reads its buffers and attributes and returns
// nullptr (success) or `call.error("...")`.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>

#include "xla/ffi/api/c_api.h"

namespace ddpm_ffi {

struct Call {
  XLA_FFI_CallFrame* frame;

  const XLA_FFI_Api* api() const { return frame->api; }

  XLA_FFI_Error* error(const char* message, XLA_FFI_Error_Code code = XLA_FFI_Error_Code_INVALID_ARGUMENT) const {
    XLA_FFI_Error_Create_Args args{XLA_FFI_Error_Create_Args_STRUCT_SIZE, nullptr, message, code};
    return api()->XLA_FFI_Error_Create(&args);
  }

  // The float32 buffer of argument i (or of result i), or nullptr if there is none.
  const XLA_FFI_Buffer* arg(int64_t i) const {
    return i < frame->args.size && frame->args.types[i] == XLA_FFI_ArgType_BUFFER
               ? f32((const XLA_FFI_Buffer*)frame->args.args[i])
               : nullptr;
  }
  const XLA_FFI_Buffer* ret(int64_t i) const {
    return i < frame->rets.size && frame->rets.types[i] == XLA_FFI_RetType_BUFFER
               ? f32((const XLA_FFI_Buffer*)frame->rets.rets[i])
               : nullptr;
  }

  // Copies the scalar attribute `name` of XLA type `dtype` into *out; false if there is none.
  template <class T>
  bool attr(const char* name, XLA_FFI_DataType dtype, T* out) const {
    const XLA_FFI_Attrs& attrs = frame->attrs;
    const size_t len = std::strlen(name);
    for (int64_t i = 0; i < attrs.size; ++i) {
      const XLA_FFI_ByteSpan* n = attrs.names[i];
      if (n->len != len || std::memcmp(n->ptr, name, len) || attrs.types[i] != XLA_FFI_AttrType_SCALAR) continue;
      const XLA_FFI_Scalar* s = (const XLA_FFI_Scalar*)attrs.attrs[i];
      if (s->dtype != dtype) return false;
      std::memcpy(out, s->value, sizeof(T));
      return true;
    }
    return false;
  }

  // Threads of XLA's intra-op pool (0 where there is none).
  int64_t threads() const {
    int64_t n = 0;
    XLA_FFI_ThreadPool_NumThreads_Args args{XLA_FFI_ThreadPool_NumThreads_Args_STRUCT_SIZE, nullptr, frame->ctx, &n};
    return ok(api()->XLA_FFI_ThreadPool_NumThreads(&args)) ? n : 0;
  }

  // Runs ((*work).*fn)() on a thread of XLA's intra-op pool, holding `work` until it ends; nothing
  // runs where there is no pool (the calling thread's own run then does every part).
  template <class W>
  void share(std::shared_ptr<W> work, void (W::*fn)()) const {
    struct Held {
      std::shared_ptr<W> work;
      void (W::*fn)();
    };
    auto* held = new Held{std::move(work), fn};
    auto task = [](void* data) {
      auto* h = (Held*)data;
      ((*h->work).*(h->fn))();
      delete h;
    };
    XLA_FFI_ThreadPool_Schedule_Args args{XLA_FFI_ThreadPool_Schedule_Args_STRUCT_SIZE, nullptr, frame->ctx, task,
                                          held};
    if (!ok(api()->XLA_FFI_ThreadPool_Schedule(&args))) delete held;
  }

 private:
  static const XLA_FFI_Buffer* f32(const XLA_FFI_Buffer* b) { return b->dtype == XLA_FFI_DataType_F32 ? b : nullptr; }

  bool ok(XLA_FFI_Error* e) const {
    if (!e) return true;
    XLA_FFI_Error_Destroy_Args args{XLA_FFI_Error_Destroy_Args_STRUCT_SIZE, nullptr, e};
    api()->XLA_FFI_Error_Destroy(&args);
    return false;
  }
};

// Elements of a buffer.
inline int64_t elements(const XLA_FFI_Buffer* b) {
  int64_t n = 1;
  for (int64_t i = 0; i < b->rank; ++i) n *= b->dims[i];
  return n;
}

template <class Body>
XLA_FFI_Error* handle(XLA_FFI_CallFrame* frame, Body body) {
  Call call{frame};
  const XLA_FFI_Extension_Base* ext = frame->extension_start;
  if (ext && ext->type == XLA_FFI_Extension_Metadata) {  // XLA asks which FFI version built the handler
    const auto* me = (const XLA_FFI_Metadata_Extension*)ext;
    XLA_FFI_Metadata* m = me->metadata;
    if (ext->struct_size < XLA_FFI_Metadata_Extension_STRUCT_SIZE || m->struct_size < XLA_FFI_Metadata_STRUCT_SIZE)
      return call.error("ddpm_jax: XLA's FFI metadata is older than the headers the kernels were built with",
                        XLA_FFI_Error_Code_FAILED_PRECONDITION);
    m->api_version = XLA_FFI_Api_Version{XLA_FFI_Api_Version_STRUCT_SIZE, nullptr, XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR};
    m->traits = 0;
    m->state_type_id = XLA_FFI_UNKNOWN_TYPE_ID;
    return nullptr;
  }
  if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) return call.error("ddpm_jax: only the execute stage is bound");
  return body(call);
}

}  // namespace ddpm_ffi
