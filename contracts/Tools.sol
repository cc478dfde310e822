// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {Job, JobStatus, JobDefinition, ProviderPrices, Label, StorageType} from "./Types.sol";
import {SameStatusError, JobHotStatusOnly, InvalidTransition} from "./Errors.sol";

/// @title Tools
/// @notice The job status machine and the pricing math, shared by JobRepository and MetaScheduler.
/// @dev The contracts use the internal functions, compiled into them, so no call pays for a
///      DELEGATECALL. The public functions expose the same rules to clients (DeepSquare's SDK calls them
///      on the deployed library with eth_call).
library Tools {
    // ------------------------------------------------------------ for clients

    /// @notice Reverts unless `from -> to` is a legal transition; the checks run in the protocol's order.
    function checkNewJobStatus(JobStatus _currentJobStatus, JobStatus _nextJobStatus) public pure {
        requireTransition(_currentJobStatus, _nextJobStatus);
    }

    /// @notice True for PENDING, META_SCHEDULED, SCHEDULED and RUNNING.
    function isJobHot(JobStatus _jobStatus) public pure returns (bool) {
        return isHot(_jobStatus);
    }

    /// @notice True for the terminal statuses CANCELLED, FINISHED, FAILED, OUT_OF_CREDITS and PANICKED.
    function isJobCold(JobStatus _jobStatus) public pure returns (bool) {
        return !isHot(_jobStatus);
    }

    /// @notice True where credits may be added to a job: SCHEDULED or RUNNING.
    function isDelegateTopable(JobStatus _jobStatus) public pure returns (bool) {
        return _jobStatus == JobStatus.SCHEDULED || _jobStatus == JobStatus.RUNNING;
    }

    function isJobDefinitionValid(JobDefinition memory _jobDefinition) public pure returns (bool) {
        return isValidDefinition(_jobDefinition);
    }

    /// @notice Whole minutes that `amountLocked` credit-wei buy for the job at these prices.
    function convertCreditToDuration(
        JobDefinition memory jobDefinition,
        ProviderPrices memory providerPrices,
        uint256 amountLocked
    ) public pure returns (uint64) {
        return durationMinute(amountLocked, creditsPerMin(jobDefinition, providerPrices));
    }

    /// @notice Credit-wei that `durationMinute_` minutes of the job cost at these prices.
    function convertDurationToCredit(
        JobDefinition memory jobDefinition,
        ProviderPrices memory providerPrices,
        uint64 durationMinute_
    ) public pure returns (uint256) {
        return uint256(durationMinute_) * creditsPerMin(jobDefinition, providerPrices);
    }

    /// @notice Minutes the job's locked credits still buy now: all of them before it runs, those not yet
    ///         elapsed while it runs, none once it ended.
    function getRemainingTime(Job memory job, ProviderPrices memory providerPrices) public view returns (uint64) {
        return remainingMinutes(job, creditsPerMin(job.definition, providerPrices));
    }

    // ------------------------------------------------------------ for the contracts

    function isHot(JobStatus status) internal pure returns (bool) {
        return status <= JobStatus.RUNNING;
    }

    function requireTransition(JobStatus from, JobStatus to) internal pure {
        if (from == to) revert SameStatusError();
        if (!isHot(from)) revert JobHotStatusOnly(from);
        if (to == JobStatus.PANICKED) return;
        if (from == JobStatus.PENDING) {
            if (to == JobStatus.META_SCHEDULED || to == JobStatus.CANCELLED) return;
        } else if (from == JobStatus.META_SCHEDULED) {
            if (to == JobStatus.PENDING || to == JobStatus.SCHEDULED || to == JobStatus.CANCELLED) return;
        } else if (from == JobStatus.SCHEDULED) {
            if (
                to == JobStatus.PENDING || to == JobStatus.RUNNING || to == JobStatus.CANCELLED
                    || to == JobStatus.FAILED
            ) return;
        } else {
            // RUNNING
            if (
                to == JobStatus.FINISHED || to == JobStatus.FAILED || to == JobStatus.CANCELLED
                    || to == JobStatus.OUT_OF_CREDITS
            ) return;
        }
        revert InvalidTransition(from, to);
    }

    /// @notice Credit-wei per minute that a job costs on a provider with these prices.
    function creditsPerMin(JobDefinition memory definition, ProviderPrices memory prices)
        internal
        pure
        returns (uint256)
    {
        uint256 cpus = uint256(definition.cpusPerTask);
        uint256 perTask = cpus * prices.cpuPricePerMin + cpus * uint256(definition.memPerCpu) * prices.memPricePerMin;
        return uint256(definition.ntasks) * perTask + uint256(definition.gpus) * prices.gpuPricePerMin;
    }

    /// @notice Whole minutes that `credits` buy at `perMin`; a free job gets the largest duration.
    function durationMinute(uint256 credits, uint256 perMin) internal pure returns (uint64) {
        if (perMin == 0) return type(uint64).max;
        uint256 minutes_ = credits / perMin;
        return minutes_ > type(uint64).max ? type(uint64).max : uint64(minutes_);
    }

    /// @dev A scheduled job has its whole duration left; a running one loses the minutes elapsed.
    function remainingMinutes(Job memory job, uint256 perMin) internal view returns (uint64) {
        if (!isHot(job.status)) return 0;
        uint64 total = durationMinute(job.cost.maxCost, perMin);
        if (job.status != JobStatus.RUNNING) return total;
        uint256 elapsed = (block.timestamp - job.time.start) / 60;
        return total > elapsed ? uint64(total - elapsed) : 0;
    }

    /// @notice A definition is valid when it asks for at least one task, one CPU and some memory, and
    ///         names a storage type DeepSquare's clients know (0 to 4).
    function isValidDefinition(JobDefinition memory definition) internal pure returns (bool) {
        return definition.ntasks > 0 && definition.cpusPerTask > 0 && definition.memPerCpu > 0
            && definition.storageType <= uint8(type(StorageType).max);
    }

    /// @notice Copies labels from memory to storage (the compiler cannot copy struct arrays in one step).
    function copyLabels(Label[] storage target, Label[] memory source) internal {
        while (target.length > 0) target.pop();
        for (uint256 i = 0; i < source.length; i++) {
            target.push(source[i]);
        }
    }
}
