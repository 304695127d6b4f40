#!/usr/bin/env bash
# Runs one scenario through the real pipeline on isolated topics, then the evaluator:
#   deploy/local/evaluate_scenario.sh SCENARIO.yaml SPEED OUT_DIR   (DURATION=seconds optional)
# The stack must be up (hashatlas stack up).
set -u
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
SCEN=$1; SPEED=$2; OUT=$3
R=ev$RANDOM
export HASHATLAS_APP_ID=$R HASHATLAS_REDIS_PREFIX=$R HASHATLAS_SNAPSHOT_INTERVAL_S=0.25
for t in shares blocks market estimates alerts dead_letter compacted_shares history; do export HASHATLAS_TOPICS__${t^^}=$R-$t; done
mkdir -p $OUT; cd $OUT
$ROOT/.venv/bin/hashatlas stack topics > /dev/null
$ROOT/.venv/bin/hashatlas compactor --metrics-port 0 > compactor.log 2>&1 & C=$!
$ROOT/.venv/bin/hashatlas worker --metrics-port 0 > worker.log 2>&1 & W=$!
sleep 8
$ROOT/.venv/bin/hashatlas simulate $ROOT/scenarios/$SCEN --speed $SPEED --truth truth.jsonl ${DURATION:+--duration $DURATION} > sim.log 2>&1
sleep 10
$ROOT/.venv/bin/hashatlas evaluate --truth truth.jsonl --from-redis --intervals-from-kafka --json report.json --plot report.png > report.txt 2>&1
kill $C $W; wait
