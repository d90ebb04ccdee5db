// The short TOGA-q search several tests run: W3A4 with INT8 salient channels on a tiny model, its
// channel orders from 4 windows of the training tokens.
#pragma once

#include <string>
#include <vector>

#include "model/model.h"
#include "quant/calibration.h"
#include "search/supernet.h"
#include "search/train.h"

namespace toga::test {

inline SearchResult w3a4_quant_search(Model& m, const std::vector<int>& tokens, int steps,
                                      const std::string& checkpoint = "", bool resume = false) {
  auto groups = quant_mask_groups(m);
  compute_channel_orders(m, groups, sample_calibration_windows(tokens, 4, 32, 1));
  SupernetQuantizers q;
  q.weight_low = {3, true, 0};
  q.act_low = {4, true, 0};
  q.act_high = {8, true, 0};
  Supernet net(m, groups, q);
  SearchOptions o;
  o.budget = 3.6 / 16;
  o.steps = steps;
  o.seqlen = 16;
  o.lr = 0.02;
  o.checkpoint_every = 2;
  o.checkpoint_path = checkpoint;
  o.resume = resume;
  o.progress = false;
  return train_search(m, net, tokens, o);
}

}  // namespace toga::test
