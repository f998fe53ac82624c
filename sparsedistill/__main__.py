"""`python -m sparsedistill`: which implementation serves each op on this machine."""
import json
import sys


def main() -> int:
    import sparsedistill

    info = sparsedistill.backend_info()
    if "--json" in sys.argv[1:]:
        print(json.dumps(info, indent=2))
        return 0
    print(f"sparsedistill {sparsedistill.__version__}  torch {info['torch']}  "
          f"cuda available: {info['cuda_available']}")
    print(f"native extension loaded: {info['native_loaded']}"
          + (f" ({info['reason']})" if info["reason"] else ""))
    print("build: " + ", ".join(f"{k}={v}" for k, v in info["build"].items()))
    width = max(map(len, info["ops"]))
    for op, devices in info["ops"].items():
        for dev, impl in devices.items():
            print(f"  {op:<{width}} {dev:<5} {impl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
