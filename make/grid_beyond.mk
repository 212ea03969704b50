# Beyond the paper (included after make/grid.mk, whose row and table macros it uses):
#
#   make beyond                 # Qwen2.5-VL-7B CoT-SFT + GRPO-Difficulty; dynamic sampling + phi; GSPO + phi
#   make beyond SCALE=debug     # the same rows on the tiny presets (tiny-qwen2.5-vl for the Qwen2.5-VL rows)
#   make -n beyond              # what would run, in order
#
# The dynamic-sampling and GSPO rows start from Table 4's cot90k weights, so they compare with
# table4_s2diff; the Qwen2.5-VL rows train their own stage 1. SCALE=mini is not set up for these rows
# (the demo's recipe is a Qwen2-VL); the merged table is $(GRID_RUNS)/beyond.md.

# FSDP settings of the 7B overlay, then the Qwen2.5-VL backbone again (the FSDP overlay names Qwen2-VL-7B)
GRID_FSDP_qwen2.5-7b := $(if $(FSDP_7B),--config $(FSDP_7B) --config experiments/size/qwen2.5-7b.yaml)

$(eval $(call GRID_ROW,beyond_q25_cot,sft,configs/cot_sft.yaml,experiments/beyond/q25_cot.yaml,qwen2.5-7b,))
$(eval $(call GRID_ROW,beyond_q25_diff,grpo,configs/grpo_diff.yaml,experiments/beyond/q25_diff.yaml,qwen2.5-7b,beyond_q25_cot))
$(eval $(call GRID_ROW,beyond_dynamic_phi,grpo,configs/grpo_diff.yaml,experiments/beyond/dynamic_phi.yaml,7b,table4_cot90k))
$(eval $(call GRID_ROW,beyond_gspo_phi,grpo,configs/grpo_diff.yaml,experiments/beyond/gspo_phi.yaml,7b,table4_cot90k))

BEYOND_ROWS := table4_s2diff beyond_dynamic_phi beyond_gspo_phi beyond_q25_diff
ifeq ($(SCALE),debug)
# the debug overlays build the tiny Qwen2-VL: the Qwen2.5-VL rows take its Qwen2.5-VL twin
$(foreach r,beyond_q25_cot beyond_q25_diff,$(call grid_weights,$(r)) $(call grid_results,$(r))): GRID_EXTRA += --model.init_args.backbone.preset=tiny-qwen2.5-vl
endif
ifeq ($(SCALE),mini)
ifneq ($(filter beyond,$(MAKECMDGOALS)),)
$(error make beyond: SCALE=mini is not set up for these rows (the demo's recipe is a Qwen2-VL); use SCALE=debug or full)
endif
endif

beyond: ## Beyond the paper: Qwen2.5-VL-7B GRPO-Difficulty, dynamic sampling + phi, GSPO + phi (SCALE=debug on CPU)
$(eval $(call GRID_TABLE,beyond,mig,$(BEYOND_ROWS)))
