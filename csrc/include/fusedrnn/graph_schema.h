// The schema of the ops a model's graph holds: fusedrnn::{family}_forward and
// fusedrnn::{family}_backward, one layer-direction over a whole sequence.
// fusedrnn/ops.py defines the same schema in Python for a family that has no
// C++ definition (one registered from Python, or every family where the
// extension is not built); tests/test_graph_ops.py checks the two agree.
//
// `backend` names the backend that runs the call ("auto": resolved at run
// time, on the device the call runs on); `strategy` one of its strategies;
// `zoneout_mask` (last, so that calls without it keep their form) the layer's
// zoneout mask as op_schema.h's kernel ops take it (None: no zoneout), the
// forward's again in the backward.
#pragma once

namespace fusedrnn {
namespace graph {

constexpr const char* kForwardArguments =
    "(Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_peep, "
    "Tensor? w_proj, Tensor? batch_sizes, bool reverse, str mode, str backend, bool for_backward=True, "
    "str strategy=\"auto\", Tensor? zoneout_mask=None) -> (Tensor, Tensor, Tensor, Tensor)";

constexpr const char* kBackwardArguments =
    "(Tensor grad_out, Tensor grad_hn, Tensor? grad_cn, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, "
    "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_peep, Tensor? w_proj, Tensor? batch_sizes, bool reverse, "
    "str mode, str backend, Tensor out, Tensor workspace, bool need_dx=True, bool need_dweights=True, "
    "str strategy=\"auto\", Tensor? zoneout_mask=None) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)";

}  // namespace graph
}  // namespace fusedrnn
