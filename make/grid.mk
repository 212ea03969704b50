# The paper's ablation grid (Tables 4-6 and the size axis) as Make targets; included by the Makefile.
#
#   make ablation-phi               # Table 5 at full scale (8 GPUs per run, FSDP)
#   make ablation-phi SCALE=mini    # the same grid with the demo's learnable recipe on a CPU (~30 min)
#   make ablation-phi SCALE=debug   # the same grid: tiny preset, synthetic data, CPU, a few minutes
#   make ablation-phi SCALE=mini SEEDS=0,1,2   # once per seed, then mean and spread per row
#   make -n table4                  # what would run, in order
#
# A row is `configs/<stage>.yaml` + `experiments/size/<size>.yaml` [+ FSDP config] +
# `experiments/<table>/<row>.yaml` [+ the scale's overlay: `experiments/debug/<kind>.yaml`, or for
# SCALE=mini `<runs>/overlays/<kind>.yaml` written from univg.demo.DemoSettings by univg.demo.grid]; it
# trains into $(GRID_RUNS)/<name>/fit/ (TensorBoard events, config.yaml, checkpoints/, weights.ckpt), is
# evaluated into $(GRID_RUNS)/<name>/test/results_test.json, and rows whose results exist are
# skipped. Stage-2 rows start from their stage-1 row's weights.ckpt (--model.init_args.init_checkpoint),
# which is trained first when missing. The merged table goes to $(GRID_RUNS)/<target>.md (+ .csv).
# experiments/README.md has the details.

comma := ,
GRID_SCALES := full mini debug
grid_weights = $(GRID_RUNS)/$(1)/fit/weights.ckpt
grid_results = $(GRID_RUNS)/$(1)/test/results_test.json
ifeq ($(filter $(SCALE),$(GRID_SCALES)),)
$(error unknown SCALE=$(SCALE): choose one of $(GRID_SCALES))
endif
GRID_PY ?= $(PY)
ifeq ($(SCALE),debug)
GRID_ROOT ?= runs/debug
GRID_RUNS ?= $(GRID_ROOT)
GRID_EVAL ?= configs/eval/synthetic.yaml
GRID_SCALE_sft := --config experiments/debug/sft.yaml
GRID_SCALE_grpo := --config experiments/debug/grpo.yaml
GRID_SCALE_eval := --config experiments/debug/eval.yaml
FSDP_7B ?=
FSDP_2B ?=
else ifeq ($(SCALE),mini)
# the demo's recipe (univg.demo.DemoSettings, seed $(SEED)) as overlays written into the runs folder
GRID_ROOT ?= runs/mini
GRID_RUNS ?= $(GRID_ROOT)/seed$(SEED)
GRID_EVAL ?= configs/eval/synthetic.yaml
GRID_OVERLAYS = $(GRID_RUNS)/overlays
GRID_SCALE_sft = --config $(GRID_OVERLAYS)/sft.yaml
GRID_SCALE_grpo = --config $(GRID_OVERLAYS)/grpo.yaml
GRID_SCALE_eval = --config $(GRID_OVERLAYS)/eval.yaml
GRID_NEEDS = $(GRID_OVERLAYS)/eval.yaml
# MINI_SET="grpo_steps=40 eval_n=200": DemoSettings fields changed for this grid (no spaces in a value)
GRID_MINI_SET = $(foreach p,$(MINI_SET),--set '$(p)')
FSDP_7B ?=
FSDP_2B ?=
# the start of stage 2 and the constant-box baseline head the phi table at this scale
GRID_START_table5 := mini_constant_box table4_cot90k
# regenerated when the demo's settings or this module change (rows already run are kept: delete them to rerun)
$(GRID_OVERLAYS)/eval.yaml: $(wildcard univg/demo/*.py)
	$(GRID_PY) -m univg.demo.grid overlays --seed $(SEED) $(GRID_MINI_SET) --out $(GRID_OVERLAYS)
$(call grid_results,mini_constant_box): | $(GRID_OVERLAYS)/eval.yaml
	$(GRID_PY) -m univg.demo.grid baseline --seed $(SEED) $(GRID_MINI_SET) --out $(GRID_RUNS)/mini_constant_box/test
else
GRID_ROOT ?= runs
GRID_RUNS ?= $(GRID_ROOT)
GRID_EVAL ?= configs/eval/mig_bench.yaml
# 8 GPUs per run with FSDP2; `FSDP_7B=` (empty) runs with the stage config's own trainer settings
FSDP_7B ?= configs/fsdp/7b_8gpu.yaml
FSDP_2B ?= configs/fsdp/2b_8gpu.yaml
endif
GRID_FSDP_7b := $(if $(FSDP_7B),--config $(FSDP_7B))
GRID_FSDP_2b := $(if $(FSDP_2B),--config $(FSDP_2B))
# every grid run: runs under GRID_RUNS, hyper-parameters in TensorBoard's HParams view; GRID_EXTRA for more
GRID_ARGS = --trainer.logger.init_args.save_dir=$(GRID_RUNS) --seed_everything=$(SEED) --trainer.callbacks+=univg.callbacks.HParamsLogger $(GRID_EXTRA)

# parse-time skip: a row whose results exist is no prerequisite at all (its checkpoints may be gone)
grid_todo = $(foreach r,$(1),$(if $(wildcard $(call grid_results,$(r))),,$(call grid_results,$(r))))

# $(call GRID_ROW,name,kind sft|grpo|eval,stage config,row overlay,size 7b|2b,stage-1 row or empty)
define GRID_ROW
ifneq ($(2),eval)
$(call grid_weights,$(1)): | $(GRID_NEEDS) $(if $(6),$(if $(wildcard $(call grid_weights,$(1))),,$(call grid_weights,$(6))))
	$$(GRID_PY) -m univg fit --config $(3) --config experiments/size/$(5).yaml $$(GRID_FSDP_$(5)) --config $(4) $$(GRID_SCALE_$(2)) $$(GRID_ARGS) --trainer.logger.init_args.version=fit $(if $(6),--model.init_args.init_checkpoint=$(call grid_weights,$(6)))
	$$(GRID_PY) -m univg.sharded_checkpoint weights $(GRID_RUNS)/$(1)/fit/checkpoints/last.ckpt $$@
endif
$(call grid_results,$(1)): | $(GRID_NEEDS) $(if $(filter eval,$(2)),,$(call grid_weights,$(1)))
	$$(GRID_PY) -m univg test --config $$(GRID_EVAL) --config experiments/size/$(5).yaml $(if $(filter eval,$(2)),--config $(4)) $$(GRID_SCALE_eval) $$(GRID_ARGS) --trainer.logger.init_args.name=$(1) --trainer.logger.init_args.version=test $(if $(filter eval,$(2)),,--model.init_args.init_checkpoint=$(call grid_weights,$(1)))
endef

# $(call GRID_TABLE,target,layout,rows): the scale's reference rows (GRID_START_<layout>) head the table
ifeq ($(SEEDS),)
define GRID_TABLE
.PHONY: $(1)
$(1): $(call grid_todo,$(GRID_START_$(2)) $(3))
	@echo "univg grid $(1) (SCALE=$(SCALE), seed $(SEED)): $(words $(3)) rows, skipped (results existed): $(foreach r,$(3),$(if $(filter $(call grid_results,$(r)),$(call grid_todo,$(3))),,$(r)))"
	$$(GRID_PY) -m univg.reports merge --runs $(foreach r,$(GRID_START_$(2)) $(3),$(GRID_RUNS)/$(r)/test) --layout $(2) --out $(GRID_RUNS)/$(1).md
	@cat $(GRID_RUNS)/$(1).md
endef
else
# SEEDS=0,1,2: the table once per seed (a sub-make each, into $(GRID_ROOT)/seed<N>), then one table
# of mean and spread per row over the seeds, $(GRID_ROOT)/<target>-seeds.md
GRID_SEED_LIST := $(subst $(comma), ,$(SEEDS))
define GRID_TABLE
.PHONY: $(1)
$(1):
	$(foreach s,$(GRID_SEED_LIST),$$(MAKE) --no-print-directory $(1) SCALE=$(SCALE) SEED=$(s) SEEDS= GRID_ROOT=$(GRID_ROOT) GRID_RUNS=$(GRID_ROOT)/seed$(s) &&) true
	$$(GRID_PY) -m univg.reports merge --seeds --runs $(foreach s,$(GRID_SEED_LIST),$(foreach r,$(GRID_START_$(2)) $(3),$(GRID_ROOT)/seed$(s)/$(r)/test)) --layout $(2) --out $(GRID_ROOT)/$(1)-seeds.md
	@cat $(GRID_ROOT)/$(1)-seeds.md
endef
endif

# ------------------------------------------------------------------------------------- the rows
# name, kind (sft|grpo|eval), stage config, row overlay, size, stage-1 row (no spaces: Make keeps them)
$(eval $(call GRID_ROW,table4_base,eval,,experiments/table4/base.yaml,7b,))
$(eval $(call GRID_ROW,table4_rl21k,grpo,configs/rl.yaml,experiments/table4/rl21k.yaml,7b,))
$(eval $(call GRID_ROW,table4_cot21k,sft,configs/cot_sft.yaml,experiments/table4/cot21k.yaml,7b,))
$(eval $(call GRID_ROW,table4_sft90k,sft,configs/sft.yaml,experiments/table4/sft90k.yaml,7b,))
$(eval $(call GRID_ROW,table4_cot90k,sft,configs/cot_sft.yaml,experiments/table4/cot90k.yaml,7b,))
$(eval $(call GRID_ROW,table4_s2cot,sft,configs/cot_sft.yaml,experiments/table4/s2cot.yaml,7b,table4_cot90k))
$(eval $(call GRID_ROW,table4_s2grpo,grpo,configs/grpo.yaml,experiments/table4/s2grpo.yaml,7b,table4_cot90k))
$(eval $(call GRID_ROW,table4_s2diff,grpo,configs/grpo_diff.yaml,experiments/table4/s2diff.yaml,7b,table4_cot90k))
$(eval $(call GRID_ROW,table5_phi_none,grpo,configs/grpo_diff.yaml,experiments/table5/phi_none.yaml,7b,table4_cot90k))
$(eval $(call GRID_ROW,table5_phi_neglog,grpo,configs/grpo_diff.yaml,experiments/table5/phi_neglog.yaml,7b,table4_cot90k))
$(eval $(call GRID_ROW,table5_phi_square,grpo,configs/grpo_diff.yaml,experiments/table5/phi_square.yaml,7b,table4_cot90k))
$(eval $(call GRID_ROW,table5_phi_exp,grpo,configs/grpo_diff.yaml,experiments/table5/phi_exp.yaml,7b,table4_cot90k))
$(eval $(call GRID_ROW,table6_2b_base,eval,,experiments/table6/base.yaml,2b,))
$(eval $(call GRID_ROW,table6_2b_cot,sft,configs/cot_sft.yaml,experiments/table6/cot.yaml,2b,))
$(eval $(call GRID_ROW,table6_2b_grpo,grpo,configs/grpo.yaml,experiments/table6/grpo.yaml,2b,table6_2b_cot))
$(eval $(call GRID_ROW,table6_2b_diff,grpo,configs/grpo_diff.yaml,experiments/table6/diff.yaml,2b,table6_2b_cot))

TABLE4_ROWS := table4_base table4_rl21k table4_cot21k table4_sft90k table4_cot90k table4_s2cot table4_s2grpo table4_s2diff
TABLE5_ROWS := table5_phi_none table5_phi_neglog table5_phi_square table5_phi_exp
TABLE6_ROWS := table6_2b_base table6_2b_cot table6_2b_grpo table6_2b_diff
SIZE_ROWS := table4_base table4_cot90k table4_s2diff table6_2b_base table6_2b_cot table6_2b_diff

# ----------------------------------------------------------------------------------- the tables
table4: ## Paper Table 4 (stages: base, pure RL, CoT-SFT/SFT 21k/90k, stage-2 CoT/GRPO/GRPO-Difficulty); SCALE=mini|debug on CPU
table5: ## Paper Table 5 (phi: none, neglog, square, exp), stage 2 from the CoT-SFT 90k row
ablation-phi: ## Alias of table5: the phi ablation (SCALE=mini: the demo's recipe on CPU; SCALE=debug: plumbing in minutes; SEEDS=0,1,2)
table6: ## Paper Table 6 (2B: base, CoT-SFT 90k, GRPO, GRPO-Difficulty)
size: ## Size axis: 2B vs 7B (base, CoT-SFT 90k, GRPO-Difficulty), rows shared with table4/table6
$(eval $(call GRID_TABLE,table4,table4,$(TABLE4_ROWS)))
$(eval $(call GRID_TABLE,table5,table5,$(TABLE5_ROWS)))
$(eval $(call GRID_TABLE,ablation-phi,table5,$(TABLE5_ROWS)))
$(eval $(call GRID_TABLE,table6,table6,$(TABLE6_ROWS)))
$(eval $(call GRID_TABLE,size,mig,$(SIZE_ROWS)))
