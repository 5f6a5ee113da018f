"""Steered KV-cached greedy generation tokens/s / plain KV-cached generation tokens/s,
at batch 1 and batch 8.

Both go through ``clas_lens.generate`` (the plain one with ``steerer=None``: same
code path, same ``DynamicCache``), greedy, ``stop_at_eos=False`` so every run makes
exactly ``max_new_tokens`` tokens per prompt. The steered run records the strength
trace (as ``generate`` always does). Also checks that the cache is used: the
steering hook of layer 0 must see each prompt position once and then exactly one
position per generated token.
"""

from __future__ import annotations

import common as C  # noqa: I001

PROMPTS = [
    "Tell me about your weekend plans.", "How was your day?",
    "What do you think about Mondays?", "Describe a rainy morning.",
    "Write a few sentences about starting a new job.", "What is your favourite food?",
    "Give me advice on learning to cook.", "Describe the city you live in.",
]


def run(args, model=None) -> dict:
    new = 8 if args.quick else 32
    reps = args.reps or (2 if args.quick else 4)
    model = model or C.get_model(args.dtype)
    st = C.clas_steerer(model)
    out, rounds = {}, {}
    with C.PeakRSS() as mon:
        for b in (1, 8):
            prompts = PROMPTS[:b]
            kw = dict(max_new_tokens=new, stop_at_eos=False, progress=False, batch_size=8)
            t = C.interleave({
                "plain": lambda prompts=prompts, kw=kw: C.cl.generate(model, None, prompts, **kw),
                "steer": lambda prompts=prompts, kw=kw: C.cl.generate(model, st, prompts, **kw),
            }, reps)
            # tokens/s ratio = plain time / steered time (same number of tokens)
            r = C.ratio(t, "plain", "steer")
            out[f"gen_ratio_b{b}"] = r["value"]
            out[f"gen_ratio_b{b}_wall"] = r["wall"]
            out[f"gen_ratio_b{b}_cpu"] = r["cpu"]
            out[f"plain_tok_per_s_b{b}_wall"] = b * new / C.med(t["plain"]["wall"])
            out[f"steer_tok_per_s_b{b}_wall"] = b * new / C.med(t["steer"]["wall"])
            rounds[f"b{b}"] = r
    # KV-cache check: positions seen by the layer-0 steering hook
    seen = []
    hook_name = st.hook_names[0]
    prompts = PROMPTS[:2]
    with model.hooks(fwd_hooks=[(hook_name, lambda h, hook=None: seen.append(h.shape[1]) or h)]):
        res = C.cl.generate(model, st, prompts, max_new_tokens=6, stop_at_eos=False,
                            progress=False)
    width = max(res.prompt_lengths)
    cache_ok = seen == [width] + [1] * 6
    return {**out, "max_new_tokens": new, "reps": reps, "kv_cache_one_position_per_token": cache_ok,
            "layer0_positions_per_call": seen, "dtype": args.dtype,
            "peak_rss_mb": round(mon.peak, 1), "rss_before_mb": round(mon.start, 1),
            "rounds": rounds}


def main(argv=None):
    return C.main("generate", run, __doc__, argv)


if __name__ == "__main__":
    main()
