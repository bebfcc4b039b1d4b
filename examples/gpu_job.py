"""A job that shows which GPUs it was given (the docs' `gpu_job.py`), then holds them (10 minutes,
or until stopped).

Every process prints the variables torchrun and handyjobs set; it needs no GPU, so the docs
run it against the fake GPUs of ``fake_gpus.json``.
"""

import os
import time

visible = os.environ.get("CUDA_VISIBLE_DEVICES")
order = os.environ.get("CUDA_DEVICE_ORDER")
print(f"CUDA_VISIBLE_DEVICES={visible} CUDA_DEVICE_ORDER={order}", flush=True)
time.sleep(600)
