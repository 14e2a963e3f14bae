#include "strategy.h"

#include <ATen/ATen.h>

namespace fusedrnn {
namespace cuda {

Strategy parse_strategy(const std::string& s) {
  if (s == "auto") return Strategy::automatic;
  if (s == "per_step") return Strategy::per_step;
  TORCH_CHECK(s == "persistent", "fusedrnn_C: strategy must be 'auto', 'per_step' or 'persistent', got '", s, "'");
  return Strategy::persistent;
}

namespace {

// The persistent kernel of a cell (every cell has one).
PersistentCell persistent_cell(const Cell& cell, bool proj) {
  if (cell.family == Family::lstm) return proj ? PersistentCell::lstm_projection : PersistentCell::lstm;
  if (cell.family == Family::gru) return cell.reset_after ? PersistentCell::gru_reset_after
                                                          : PersistentCell::gru_reset_before;
  return cell.relu ? PersistentCell::rnn_relu : PersistentCell::rnn_tanh;
}

}  // namespace

// The rule (README), for the forward (plan_persistent_forward) and the
// backward (plan_persistent_backward): persistent when the sequence has at
// least 2 steps and the planner says the weight slices fit in shared memory
// and the cooperative grid fits on the device.
Choice choose(Planner planner, const Cell& cell, const ProblemSizes& n) {
  Choice c;
  c.cell = persistent_cell(cell, n.projection);
  c.plan = planner(c.cell, n.dtype, n.B, n.H, n.P, n.device);
  if (!c.plan.ok) {
    c.why_not_persistent = c.plan.reason;
    return c;
  }
  if (n.steps < 2) {
    c.why_not_persistent = "a single step: nothing to keep on chip between steps";
    return c;
  }
  c.strategy = Strategy::persistent;
  return c;
}

Choice resolve_strategy(Strategy requested, Planner planner, const Cell& cell, const ProblemSizes& n) {
  Choice choice;
  if (requested == Strategy::per_step || n.steps == 0) return choice;
  choice = choose(planner, cell, n);
  if (requested == Strategy::persistent) {
    TORCH_CHECK(choice.plan.ok, "fusedrnn_C: the persistent strategy cannot run this call: ",
                choice.why_not_persistent);
    choice.strategy = Strategy::persistent;
  }
  return choice;
}

std::string describe(const Choice& c) {
  return c.strategy == Strategy::persistent ? std::string("persistent") : "per_step: " + c.why_not_persistent;
}

}  // namespace cuda
}  // namespace fusedrnn
