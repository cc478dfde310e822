// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {JobStatus} from "./Types.sol";
import {Empty, NoJob, OutOfBounds} from "./Errors.sol";

interface IJobReader {
    function getStatusAndProvider(bytes32 _jobId) external view returns (JobStatus, address);
}

/// @title ProviderJobQueues
/// @notice Per provider, three FIFO queues of job ids: jobs to claim, running jobs to cancel, and
///         jobs with credits topped up. Only the owner (MetaScheduler) pushes and pops.
/// @dev The claimable queue skips stale entries: a job refused, timed out, cancelled or given to another
///      provider after it was queued is no longer META_SCHEDULED for this provider, and is passed over
///      both by `hasNextClaimableJob` and by `popNextClaimableJob`, so it never blocks the jobs behind it.
contract ProviderJobQueues is Ownable {
    struct Queue {
        uint256 head;
        bytes32[] items;
    }

    IJobReader public immutable jobs;

    mapping(address => Queue) private _claimable;
    mapping(address => Queue) private _cancelling;
    mapping(address => Queue) private _topUp;

    constructor(address _jobs) {
        jobs = IJobReader(_jobs);
    }

    function pushClaimableJob(address _providerAddr, bytes32 _jobId) external onlyOwner {
        _claimable[_providerAddr].items.push(_jobId);
    }

    function pushCancellingJob(address _providerAddr, bytes32 _jobId) external onlyOwner {
        _cancelling[_providerAddr].items.push(_jobId);
    }

    function pushTopUpJob(address _providerAddr, bytes32 _jobId) external onlyOwner {
        _topUp[_providerAddr].items.push(_jobId);
    }

    /// @notice Pops the first job still META_SCHEDULED for the provider, dropping stale ones before it.
    function popNextClaimableJob(address _providerAddr) external onlyOwner returns (bytes32 jobId) {
        Queue storage queue = _claimable[_providerAddr];
        uint256 head = queue.head;
        uint256 length = queue.items.length;
        while (head < length) {
            jobId = queue.items[head];
            delete queue.items[head];
            head += 1;
            if (_isClaimable(_providerAddr, jobId)) {
                queue.head = head;
                return jobId;
            }
        }
        queue.head = head;
        revert NoJob();
    }

    function popNextCancellingJob(address _providerAddr) external onlyOwner returns (bytes32) {
        return _pop(_cancelling[_providerAddr]);
    }

    function popNextTopUpJob(address _providerAddr) external onlyOwner returns (bytes32) {
        return _pop(_topUp[_providerAddr]);
    }

    /// @notice True when a job is waiting for the provider's claim (stale entries do not count).
    function hasNextClaimableJob(address _providerAddr) external view returns (bool found) {
        (found,) = _firstClaimable(_providerAddr);
    }

    function hasCancellingJob(address _providerAddr) external view returns (bool) {
        return _size(_cancelling[_providerAddr]) > 0;
    }

    function hasTopUpJob(address _providerAddr) external view returns (bool) {
        return _size(_topUp[_providerAddr]) > 0;
    }

    /// @notice Entries in the claimable queue, stale ones included.
    function getClaimableJobQueueSize(address _providerAddr) external view returns (uint256 length) {
        return _size(_claimable[_providerAddr]);
    }

    function getCancellingJobQueueSize(address _providerAddr) external view returns (uint256 length) {
        return _size(_cancelling[_providerAddr]);
    }

    function getTopUpJobQueueSize(address _providerAddr) external view returns (uint256 length) {
        return _size(_topUp[_providerAddr]);
    }

    /// @notice Bounds of the provider's claimable queue: entries `_begin` (its head) to `_end` (one past
    ///         its last entry), stale ones included, as DeepSquare's clients read them.
    function providerClaimableJobsQueues(address _providerAddr) external view returns (int128 _begin, int128 _end) {
        return _bounds(_claimable[_providerAddr]);
    }

    function providerCancellingJobsQueues(address _providerAddr)
        external
        view
        returns (int128 _begin, int128 _end)
    {
        return _bounds(_cancelling[_providerAddr]);
    }

    function providerTopUpJobsQueues(address _providerAddr) external view returns (int128 _begin, int128 _end) {
        return _bounds(_topUp[_providerAddr]);
    }

    /// @notice Extension: the job the provider's next `claimNextJob` would get; Empty() when none.
    function nextClaimableJob(address _providerAddr) external view returns (bytes32 jobId) {
        bool found;
        (found, jobId) = _firstClaimable(_providerAddr);
        if (!found) revert Empty();
    }

    /// @notice Extension: how many of the provider's queued jobs are still claimable, counting at most
    ///         `_max` (a provider sizes its batch of claims with it, so none reverts NoJob()).
    function countClaimableJobs(address _providerAddr, uint256 _max) external view returns (uint256 count) {
        Queue storage queue = _claimable[_providerAddr];
        for (uint256 i = queue.head; i < queue.items.length && count < _max; i++) {
            if (_isClaimable(_providerAddr, queue.items[i])) count += 1;
        }
    }

    /// @notice Extension: up to `_count` entries of the claimable queue from position `_offset` (0 is its
    ///         head), stale ones included; OutOfBounds() when `_offset` is past its end.
    function getClaimableJobs(address _providerAddr, uint256 _offset, uint256 _count)
        external
        view
        returns (bytes32[] memory page)
    {
        Queue storage queue = _claimable[_providerAddr];
        uint256 size = _size(queue);
        if (_offset > size) revert OutOfBounds();
        uint256 length = size - _offset < _count ? size - _offset : _count;
        page = new bytes32[](length);
        for (uint256 i = 0; i < length; i++) {
            page[i] = queue.items[queue.head + _offset + i];
        }
    }

    function _firstClaimable(address _providerAddr) private view returns (bool, bytes32) {
        Queue storage queue = _claimable[_providerAddr];
        for (uint256 i = queue.head; i < queue.items.length; i++) {
            if (_isClaimable(_providerAddr, queue.items[i])) return (true, queue.items[i]);
        }
        return (false, bytes32(0));
    }

    function _bounds(Queue storage queue) private view returns (int128, int128) {
        return (int128(int256(queue.head)), int128(int256(queue.items.length)));
    }

    function _isClaimable(address _providerAddr, bytes32 _jobId) private view returns (bool) {
        (JobStatus status, address provider) = jobs.getStatusAndProvider(_jobId);
        return status == JobStatus.META_SCHEDULED && provider == _providerAddr;
    }

    function _pop(Queue storage queue) private returns (bytes32 jobId) {
        if (queue.head >= queue.items.length) revert NoJob();
        jobId = queue.items[queue.head];
        delete queue.items[queue.head];
        queue.head += 1;
    }

    function _size(Queue storage queue) private view returns (uint256) {
        return queue.items.length - queue.head;
    }
}
