// The SIMT emulator (see simt_emu.h) and the host side of simt.h.
//
// Each emulated thread is a fiber: makecontext gives it its stack and setcontext starts it;
// from then on the fiber and the scheduler switch with _setjmp / _longjmp, which, unlike
// swapcontext, save no signal mask (swapcontext makes two sigprocmask system calls a
// switch, and switches are most of what the emulator does). Fortify's __longjmp_chk
// refuses a jump onto another stack, so it is off here.
#undef _FORTIFY_SOURCE
#include "simt_emu.h"

#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <typeindex>
#include <unordered_map>
#include <vector>

#include "../cuda/simt.h"

namespace simt_emu {
namespace {

enum class Op { kNone, kSync, kSyncOr, kBallot, kShflUp, kShfl, kMatchAny };
enum class St { kReady, kBarrier, kWarp, kDone };

const char* op_name(Op op) {
  switch (op) {
    case Op::kSync: return "__syncthreads";
    case Op::kSyncOr: return "__syncthreads_or";
    case Op::kBallot: return "__ballot_sync";
    case Op::kShflUp: return "__shfl_up_sync";
    case Op::kShfl: return "__shfl_sync";
    case Op::kMatchAny: return "__match_any_sync";
    default: return "nothing";
  }
}

constexpr size_t kStack = 128 * 1024;

struct Fiber {
  ucontext_t ctx;  // where it starts
  jmp_buf at;      // where it waits, once started
  bool started = false;
  St st = St::kReady;
  Op op = Op::kNone;
  unsigned long long arg = 0, arg2 = 0, result = 0;
};

struct Launch {
  unsigned grid = 0, block = 0, bidx = 0, tid = 0;
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  jmp_buf sched;  // where the scheduler resumes when the running fiber waits or ends
  std::unordered_map<std::type_index, std::unique_ptr<char[]>> shared;
  std::string error;
};

thread_local Launch* g_launch = nullptr;
thread_local std::vector<std::unique_ptr<char[]>> g_stacks;

void fail_outside() { throw std::logic_error("simt primitive called outside simt_emu::launch"); }

Launch& cur() {
  if (g_launch == nullptr) fail_outside();
  return *g_launch;
}

void entry() {
  Launch& L = *g_launch;
  try {
    (*L.body)();
  } catch (const std::exception& e) {
    if (L.error.empty()) L.error = "thread " + std::to_string(L.tid) + " threw: " + e.what();
  } catch (...) {
    if (L.error.empty()) L.error = "thread " + std::to_string(L.tid) + " threw a non-standard exception";
  }
  L.fibers[L.tid].st = St::kDone;
  _longjmp(L.sched, 1);  // never returns (its uc_link is unused)
}

// Suspend the calling thread at a collective; returns its result.
unsigned long long wait(St st, Op op, unsigned long long arg, unsigned long long arg2 = 0) {
  Launch& L = cur();
  Fiber& f = L.fibers[L.tid];
  f.st = st;
  f.op = op;
  f.arg = arg;
  f.arg2 = arg2;
  if (_setjmp(f.at) == 0) _longjmp(L.sched, 1);
  return f.result;
}

// Run fiber f until it waits or ends.
__attribute__((noinline)) void resume(Launch& L, Fiber& f) {
  if (_setjmp(L.sched) != 0) return;
  if (!f.started) {
    f.started = true;
    setcontext(&f.ctx);
  }
  _longjmp(f.at, 1);
}

std::string describe(const Launch& L) {
  size_t counts[4][7] = {};
  for (const Fiber& f : L.fibers) ++counts[static_cast<int>(f.st)][static_cast<int>(f.op)];
  std::string s = "block " + std::to_string(L.bidx) + ":";
  const char* states[] = {"ready", "waiting", "waiting", "exited"};
  for (int st = 0; st < 4; ++st)
    for (int op = 0; op < 7; ++op)
      if (counts[st][op] != 0)
        s += " " + std::to_string(counts[st][op]) + " " + states[st] +
             (st == 3 ? "" : std::string(" at ") + op_name(static_cast<Op>(op))) + ";";
  return s;
}

// Resolve the warp collectives every lane has reached; true if any was.
bool resolve_warps(Launch& L) {
  bool any = false;
  for (unsigned w = 0; w < L.block / simt::kWarp; ++w) {
    Fiber* lanes = &L.fibers[w * simt::kWarp];
    if (!std::all_of(lanes, lanes + simt::kWarp, [](const Fiber& f) { return f.st == St::kWarp; })) continue;
    const Op op = lanes[0].op;
    for (unsigned l = 0; l < simt::kWarp; ++l) {
      const bool same = lanes[l].op == op && (op != Op::kShflUp || lanes[l].arg2 == lanes[0].arg2);
      if (!same) throw std::runtime_error("warp " + std::to_string(w) + " of block " + std::to_string(L.bidx) +
                                          ": lanes disagree on the warp collective (" + op_name(op) + " vs " +
                                          op_name(lanes[l].op) + ")");
    }
    unsigned long long out[simt::kWarp];
    for (unsigned l = 0; l < simt::kWarp; ++l) {
      switch (op) {
        case Op::kBallot: {
          unsigned b = 0;
          for (unsigned q = 0; q < simt::kWarp; ++q) b |= (lanes[q].arg != 0 ? 1u : 0u) << q;
          out[l] = b;
          break;
        }
        case Op::kShflUp: out[l] = l >= lanes[l].arg2 ? lanes[l - lanes[l].arg2].arg : lanes[l].arg; break;
        case Op::kShfl: out[l] = lanes[lanes[l].arg2 % simt::kWarp].arg; break;
        case Op::kMatchAny: {
          unsigned peers = 0;
          for (unsigned q = 0; q < simt::kWarp; ++q) peers |= (lanes[q].arg == lanes[l].arg ? 1u : 0u) << q;
          out[l] = peers;
          break;
        }
        default: throw std::logic_error("not a warp collective");
      }
    }
    for (unsigned l = 0; l < simt::kWarp; ++l) {
      lanes[l].result = out[l];
      lanes[l].st = St::kReady;
      lanes[l].op = Op::kNone;
    }
    any = true;
  }
  return any;
}

// Release the block barrier if every thread is at it; true if released.
bool resolve_barrier(Launch& L) {
  const Op op = L.fibers[0].op;
  for (const Fiber& f : L.fibers)
    if (f.st != St::kBarrier || f.op != op) return false;
  unsigned long long any = 0;
  for (const Fiber& f : L.fibers) any |= f.arg != 0;
  for (Fiber& f : L.fibers) {
    f.result = any;
    f.st = St::kReady;
    f.op = Op::kNone;
  }
  return true;
}

void run_block(Launch& L, std::mt19937_64& rng) {
  L.shared.clear();
  L.fibers.assign(L.block, Fiber{});
  while (g_stacks.size() < L.block) g_stacks.emplace_back(new char[kStack]);
  for (unsigned t = 0; t < L.block; ++t) {
    Fiber& f = L.fibers[t];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = g_stacks[t].get();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, entry, 0);
  }
  std::vector<unsigned> order;
  for (;;) {
    order.clear();
    for (unsigned t = 0; t < L.block; ++t)
      if (L.fibers[t].st == St::kReady) order.push_back(t);
    if (!order.empty()) {
      std::shuffle(order.begin(), order.end(), rng);
      for (unsigned t : order) {
        L.tid = t;
        resume(L, L.fibers[t]);
        if (!L.error.empty()) throw std::runtime_error("block " + std::to_string(L.bidx) + ", " + L.error);
      }
      continue;
    }
    if (resolve_warps(L) || resolve_barrier(L)) continue;
    if (std::all_of(L.fibers.begin(), L.fibers.end(), [](const Fiber& f) { return f.st == St::kDone; })) return;
    throw std::runtime_error("deadlock or divergent barrier in " + describe(L));
  }
}

}  // namespace

void launch(unsigned grid, unsigned block, const std::function<void()>& body, uint64_t seed) {
  if (block == 0 || block % simt::kWarp != 0 || block > 1024)
    throw std::invalid_argument("block size must be a positive multiple of 32, at most 1024");
  if (g_launch != nullptr) throw std::logic_error("nested simt_emu::launch");
  Launch L;
  L.grid = grid;
  L.block = block;
  L.body = &body;
  std::mt19937_64 rng(seed);
  g_launch = &L;
  try {
    for (unsigned b = 0; b < grid; ++b) {
      L.bidx = b;
      run_block(L, rng);
    }
  } catch (...) {
    g_launch = nullptr;
    throw;
  }
  g_launch = nullptr;
}

}  // namespace simt_emu

namespace simt {
unsigned thread_idx() { return simt_emu::cur().tid; }
unsigned block_idx() { return simt_emu::cur().bidx; }
unsigned block_dim() { return simt_emu::cur().block; }
unsigned grid_dim() { return simt_emu::cur().grid; }
void sync() { simt_emu::wait(simt_emu::St::kBarrier, simt_emu::Op::kSync, 0); }
bool sync_or(bool p) { return simt_emu::wait(simt_emu::St::kBarrier, simt_emu::Op::kSyncOr, p) != 0; }
unsigned ballot(bool p) {
  return static_cast<unsigned>(simt_emu::wait(simt_emu::St::kWarp, simt_emu::Op::kBallot, p));
}
unsigned long long shfl_up(unsigned long long v, unsigned d) {
  return simt_emu::wait(simt_emu::St::kWarp, simt_emu::Op::kShflUp, v, d);
}
unsigned long long shfl(unsigned long long v, unsigned src) {
  return simt_emu::wait(simt_emu::St::kWarp, simt_emu::Op::kShfl, v, src);
}
unsigned match_any(unsigned v) {
  return static_cast<unsigned>(simt_emu::wait(simt_emu::St::kWarp, simt_emu::Op::kMatchAny, v));
}
void* shared_storage(const std::type_info& type, size_t bytes, size_t align) {
  auto& slot = simt_emu::cur().shared[std::type_index(type)];
  if (!slot) {
    slot.reset(new char[bytes + align]);
    std::memset(slot.get(), 0xa5, bytes + align);  // garbage, as on a GPU: code must initialise it
  }
  const auto p = reinterpret_cast<uintptr_t>(slot.get());
  return reinterpret_cast<void*>((p + align - 1) / align * align);
}
}  // namespace simt
