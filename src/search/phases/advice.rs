//! The recommendation, written from the typed findings of every phase.

use super::*;

impl<R: TrialRunner> Session<'_, R> {
    /// The recommendation from the phases' results.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::search) fn recommend(
        self,
        fit: FitPhase,
        cap: Option<BatchCap>,
        curve: CurvePhase,
        range: RangePhase,
        mut reference: ReferencePhase,
        raced: RacePhase,
        check: CheckPhase,
        runs: RunPlan,
    ) -> Recommendation {
        let spec = self.spec;
        let policy = &spec.policy;
        let mut rationale: Vec<String> = Vec::new();
        rationale.extend(fit.rationale);
        rationale.extend(curve.rationale.iter().cloned());
        rationale.extend(range.rationale);
        rationale.extend(runs.rationale);
        rationale.extend(std::mem::take(&mut reference.rationale));
        rationale.extend(raced.rationale);
        rationale.extend(check.rationale);
        let reused = self
            .records
            .iter()
            .filter(|r| r.process_trial.is_some_and(|k| k > 1))
            .count();
        if reused > 0 {
            let started = self
                .records
                .iter()
                .filter(|r| r.process_trial.is_none_or(|k| k == 1))
                .count();
            rationale.push(format!(
                "the command ran {} trials in {started} process(es): persistent trials (docs/command-runner.md)",
                self.records.len()
            ));
        }
        let batch = raced.batch;
        let world = spec.training.world_size.max(1);
        if raced.race.is_some() && raced.preferred != batch {
            rationale.push(format!(
                "the race overruled the model: {batch} instead of its {}",
                raced.preferred
            ));
        }
        if cap
            .as_ref()
            .is_some_and(|c| batch >= c.largest_batch && c.binding)
        {
            rationale.push(format!(
                "the recommendation sits at the data cap of {}: the training set, not memory, limits it",
                cap.as_ref().map_or(0, |c| c.largest_batch)
            ));
        }

        // The LR rule: anchored at the chosen batch when it was measured
        // there, with the exponent measured between two batches if asked.
        let textbook = textbook_alpha(spec);
        let mut best_lrs: Vec<BestLr> = Vec::new();
        if let Some(best) = &check.best {
            best_lrs.push(best.clone());
        } else if let Some(lr) = raced.learning_rate {
            best_lrs.push(BestLr {
                batch_size: batch,
                learning_rate: lr,
                best_tested_lr: lr,
                validation_loss: f64::NAN,
                interpolated: false,
            });
        }
        if let Some(r) = &reference.best {
            if best_lrs
                .first()
                .is_none_or(|b| b.batch_size != r.batch_size)
            {
                best_lrs.push(r.clone());
            }
        }
        let measured_alpha = match (check.best.as_ref(), reference.best.as_ref()) {
            (Some(a), Some(b))
                if (a.batch_size.max(b.batch_size) as f64
                    / a.batch_size.min(b.batch_size).max(1) as f64)
                    >= 2.0 =>
            {
                fit_alpha(a, b)
            }
            _ => None,
        };
        // Both best LRs come from single-seed runs (confirmations at the
        // reference batch, the check at the chosen one), whose optimum moves
        // by a grid step from seed to seed: their exponent is shown, never
        // called measured. The textbook rule is used and named as such.
        let textbook_kind = if textbook >= 1.0 {
            LrScaling::Linear
        } else {
            LrScaling::Sqrt
        };
        let kind = match policy.lr_scaling {
            LrScaling::Measured => {
                rationale.push(format!(
                    "the policy asks for a measured LR exponent, but the best LRs at two batches come from single-seed runs, which do not measure it{}: the textbook rule ({textbook_kind}, alpha {textbook}) is used",
                    measured_alpha.map_or(String::new(), |a| format!(" (their exponent {a:.2} is shown, not used)"))
                ));
                textbook_kind
            }
            other => other,
        };
        let lr_rule = best_lrs.first().map(|best| LrRule {
            kind,
            reference_batch: best.batch_size,
            reference_lr: best.learning_rate,
            alpha: match kind {
                LrScaling::Linear => 1.0,
                LrScaling::Sqrt => 0.5,
                LrScaling::Measured => textbook,
            },
            measured_alpha,
            textbook_alpha: textbook,
        });

        // Accumulation, global batch and the LR that goes with it.
        let global = batch * u64::from(world);
        let (accumulation, effective) = match spec.training.target_batch_size {
            Some(target) if target > global => {
                let wanted = target.div_ceil(global);
                let steps = wanted.min(u64::from(policy.max_accumulation_steps)).max(1);
                if steps < wanted {
                    rationale.push(format!(
                        "reaching the target batch of {target} needs {wanted} accumulation steps; the policy allows {}, so the effective batch is {}",
                        policy.max_accumulation_steps,
                        global * steps
                    ));
                } else {
                    rationale.push(format!(
                        "{steps} gradient-accumulation steps reach the target batch of {target} ({} per optimizer step); accumulation adds no samples per second, only a larger effective batch",
                        global * steps
                    ));
                }
                (steps as u32, global * steps)
            }
            _ => (1, global),
        };
        let learning_rate = lr_rule.as_ref().map(|rule| rule.lr_at(effective));
        let interval = check.interval.map(|(lo, hi)| {
            let scale = lr_rule
                .as_ref()
                .map_or(1.0, |r| (effective as f64 / batch as f64).powf(r.alpha));
            (lo * scale, hi * scale)
        });
        if let (Some(rule), Some(lr)) = (&lr_rule, learning_rate) {
            rationale.push(format!(
                "learning rate {lr:.3e} for the effective batch {effective}{}: best validation loss at batch {} was at {:.3e}; scaled with lr ~ B^{:.2} ({} rule; single-seed alpha {}, textbook {})",
                interval.map_or(String::new(), |(lo, hi)| format!(" (within noise from {lo:.2e} to {hi:.2e})")),
                rule.reference_batch,
                rule.reference_lr,
                rule.alpha,
                rule.kind,
                rule.measured_alpha.map_or("n/a".to_string(), |a| format!("{a:.2}")),
                rule.textbook_alpha
            ));
        }
        let dataset_size = spec.training.dataset_size.or(self.train_samples);
        let updates_per_epoch = dataset_size.map(|n| n.div_ceil(effective).max(1));
        let total_updates =
            updates_per_epoch.map(|u| (u as f64 * spec.training.epochs).ceil() as u64);
        let warmup_steps =
            total_updates.map(|t| (t as f64 * policy.lr_search.warmup_fraction).ceil() as u64);

        // Expectations: measured where the batch was tested, else modelled.
        let measured_peak = self
            .records
            .iter()
            .filter(|r| r.batch_size == batch && r.outcome == Outcome::Ok)
            .filter_map(|r| r.peak_memory_bytes)
            .max();
        let expected_peak = measured_peak.or_else(|| {
            fit.max_fit
                .memory_model
                .map(|m| m.predict(batch).max(0.0) as u64)
        });
        let expected_speed =
            speed_at(&curve.points, curve.model.as_ref(), batch).map(|s| s * f64::from(world));
        let measured_precision = match self.ctx.device {
            TrialDevice::Cpu => "f32".to_string(),
            TrialDevice::Cuda(_) => spec.precision.to_string(),
        };
        let precision = precision_advice(
            matches!(self.ctx.device, TrialDevice::Cuda(_)),
            &spec.precision.to_string(),
            &measured_precision,
        );
        if world > 1 {
            rationale.push(format!(
                "data-parallel over {world} replicas: {batch} per device, {global} globally; memory is per device, throughput assumes linear scaling"
            ));
        }
        let goodput = reference
            .model_noise()
            .map(|n| goodput_curve(&curve.points, n.value, world))
            .unwrap_or_default();
        let noise = reference.noise;
        for what in &self.skipped {
            rationale.push(format!("left out: {what}"));
        }
        for (phase, what) in &self.cut {
            rationale.push(format!("{} phase cut short: {what}", phase.as_str()));
        }
        let partial_reason = (!self.cut.is_empty()).then(|| {
            self.cut
                .iter()
                .map(|(phase, what)| {
                    format!("{} cut short by the time budget: {what}", phase.as_str())
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        let mut confirmations = reference.runs;
        confirmations.extend(check.runs);
        Recommendation {
            schema_version: SCHEMA_VERSION,
            job: spec.name.clone(),
            policy: spec.policy_name.clone(),
            objective: policy.objective,
            device: self.ctx.device,
            batchd_version: env!("CARGO_PKG_VERSION").to_string(),
            batch_size: batch,
            world_size: world,
            global_batch_size: global,
            gradient_accumulation_steps: accumulation,
            effective_batch_size: effective,
            lr: LrAdvice {
                learning_rate,
                interval,
                rule: lr_rule,
            },
            schedule: ScheduleAdvice {
                dataset_size,
                updates_per_epoch,
                total_updates,
                warmup_steps,
                decay: "cosine".into(),
                final_lr_fraction: policy.race.final_lr_fraction,
            },
            memory: MemoryAdvice {
                limit_bytes: self.ctx.memory_limit_bytes,
                limit_source: self.ctx.memory_limit_source.clone(),
                headroom_fraction: policy.memory_headroom_fraction,
                max_fit: fit.max_fit,
                expected_peak_bytes: expected_peak,
            },
            throughput: ThroughputAdvice {
                expected_samples_per_second: expected_speed,
                curve: curve.points,
                plateau_batch_size: curve.plateau,
                step_time_model: curve.model,
                goodput_curve: goodput,
            },
            precision,
            evidence: Evidence {
                gradient_noise: noise,
                preconditioned_noise: reference.preconditioned,
                noise_by_progress: raced.noise_by_progress,
                lr_range_tests: range.test.into_iter().collect(),
                lr_confirmations: confirmations,
                best_lrs,
                race: raced.race,
                batch_cap: cap,
                budget_plan: self.plan,
                trials: self.records,
            },
            rationale,
            partial: partial_reason.is_some(),
            partial_reason,
            phases_cut: self.cut.iter().map(|(p, _)| *p).collect(),
            seconds: self.clock.now().saturating_sub(self.started).as_secs_f64(),
        }
    }
}
