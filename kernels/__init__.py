"""Pure tensor functions behind tapefit's loss, scale, transform and metrics stages.

No Keras state, no variables: lists of tensors in, tensors out, safe to trace
under `tf.function(jit_compile=True)`.
"""

from kernels.clipping import (clip_by_global_norm, clip_by_norm, clip_by_value,
                              clip_each_by_norm, clip_gradients, global_norm)
from kernels.loss_reduction import (class_weights_to_sample_weights, match_ranks,
                                    mask_to_weights, reduce_weighted_loss,
                                    replica_scale, sum_loss_terms)
from kernels.loss_scaling import (all_finite, next_loss_scale, scale_loss,
                                  unscale_gradients)
from kernels.metric_updates import (mean_result, static_batch_weight,
                                    weighted_mean_update)
from kernels.accumulation import (accumulate, accumulated_mean, ema_momentum,
                                  ema_update, is_update_step)
