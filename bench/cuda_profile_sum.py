"""cuda_profile_sum.py: sums ncu's --csv gpu__time_duration rows by kernel (template arguments
dropped) and prints them sorted by total time. Usage: cuda_profile_sum.py prof.csv [batch]"""
import csv
import re
import sys

UNIT = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6}


def short(name):
    name = re.sub(r"\(.*$", "", name)          # arguments
    depth, out = 0, []
    for ch in name:                            # template arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out).replace("void ", "").strip()


def main():
    lines = [l for l in open(sys.argv[1], errors="replace") if l.startswith('"')]
    tot, cnt = {}, {}
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        us = float(row["Metric Value"].replace(",", "")) * UNIT.get(row["Metric Unit"], 1.0)
        k = short(row["Kernel Name"])
        tot[k] = tot.get(k, 0.0) + us
        cnt[k] = cnt.get(k, 0) + 1
    all_us = sum(tot.values())
    print("batch %s: %d kernels, %.0f us of GPU time in one step" % (
        sys.argv[2] if len(sys.argv) > 2 else "?", sum(cnt.values()), all_us))
    for k in sorted(tot, key=tot.get, reverse=True):
        print("%9.1f us %5.1f%% %5d x %7.2f us  %s" % (tot[k], 100 * tot[k] / max(all_us, 1e-9), cnt[k],
                                                     tot[k] / cnt[k], k))


main()
