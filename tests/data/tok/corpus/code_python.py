import asyncio
from dataclasses import dataclass, field


@dataclass
class Job:
    name: str
    retries: int = 3
    tags: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries!r}")


async def run(jobs: list[Job]) -> dict[str, bool]:
    results = {}
    for job in jobs:
        try:
            await asyncio.sleep(0.01)
            results[job.name] = True
        except Exception as exc:  # noqa: BLE001
            print(f"{job.name} failed: {exc}")
            results[job.name] = False
    return results

if __name__ == "__main__":
    print(asyncio.run(run([Job("a"), Job("b", tags=["x", "y"])])))
