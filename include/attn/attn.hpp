// attn/attn.hpp: the whole library. Each header below holds one concept and may be included alone.
#pragma once

#include "attn/attention.hpp"
#include "attn/common.hpp"
#include "attn/init.hpp"
#include "attn/kv_cache.hpp"
#include "attn/mask.hpp"
#include "attn/multi_head_attention.hpp"
#include "attn/online_softmax.hpp"
#include "attn/projection.hpp"
#include "attn/rope.hpp"
#include "attn/scaled_dot_product.hpp"
#include "attn/self_attention.hpp"
#include "attn/softmax.hpp"
#include "attn/varlen.hpp"
