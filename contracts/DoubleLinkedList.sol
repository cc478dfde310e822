// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title DoubleLinkedList
/// @notice A list of bytes32 entries that clients can page through with plain calls, without replaying
///         events: `fetchPage` from `head` (or any id), `get`/`objects` for one entry.
/// @dev Ids start at 1 and are never reused; 0 means "none" (an empty list, the end of a page). Adding at
///      the tail and removing are O(1); the inheriting contract decides what an entry's data means.
abstract contract DoubleLinkedList {
    struct Object {
        uint256 id;
        uint256 next;
        uint256 prev;
        bytes32 data;
    }

    event ObjectCreated(uint256 id, bytes32 data);
    event ObjectsLinked(uint256 prev, uint256 next);
    event ObjectRemoved(uint256 id);
    event NewHead(uint256 id);
    event NewTail(uint256 id);

    /// @notice Id of the first entry (0 when the list is empty).
    uint256 public head;
    /// @notice Id of the last entry (0 when the list is empty).
    uint256 public tail;
    /// @notice The last id handed out.
    uint256 public idCounter;
    /// @notice Number of entries in the list.
    uint256 public elementCount;
    /// @notice Every entry by id; a removed or unknown id reads as zeros.
    mapping(uint256 => Object) public objects;

    /// @notice The entry `_id` as (id, next, prev, data); zeros when there is none.
    function get(uint256 _id) external view returns (uint256, uint256, uint256, bytes32) {
        Object storage object = objects[_id];
        return (object.id, object.next, object.prev, object.data);
    }

    /// @notice Up to `howMany` entries' data, from the entry `cursor` (0: from the head), in list order.
    /// @return data the entries' data, `actualLength` of them
    /// @return actualLength how many entries the page holds
    /// @return newCursor the id to pass for the next page (0 when the list ends)
    function fetchPage(uint256 cursor, uint256 howMany)
        external
        view
        returns (bytes32[] memory data, uint256 actualLength, uint256 newCursor)
    {
        uint256 id = cursor == 0 ? head : cursor;
        if (id != 0 && objects[id].id == 0) id = 0;
        data = new bytes32[](howMany < elementCount ? howMany : elementCount);
        while (id != 0 && actualLength < data.length) {
            data[actualLength] = objects[id].data;
            actualLength += 1;
            id = objects[id].next;
        }
        assembly ("memory-safe") {
            mstore(data, actualLength)
        }
        newCursor = id;
    }

    /// @notice The id of the first entry holding `_hash`, searching from the entry `_from` (0: from the
    ///         head) towards the tail; 0 when there is none.
    function findIdForDataFrom(bytes32 _hash, uint256 _from) public view returns (uint256) {
        uint256 id = _from == 0 ? head : _from;
        if (objects[id].id == 0) return 0;
        while (id != 0) {
            if (objects[id].data == _hash) return id;
            id = objects[id].next;
        }
        return 0;
    }

    function _addTail(bytes32 _data) internal returns (uint256 id) {
        idCounter += 1;
        id = idCounter;
        uint256 previous = tail;
        objects[id] = Object({id: id, next: 0, prev: previous, data: _data});
        elementCount += 1;
        emit ObjectCreated(id, _data);
        if (previous == 0) {
            head = id;
            emit NewHead(id);
        } else {
            objects[previous].next = id;
            emit ObjectsLinked(previous, id);
        }
        tail = id;
        emit NewTail(id);
    }

    function _remove(uint256 _id) internal {
        Object storage object = objects[_id];
        uint256 previous = object.prev;
        uint256 following = object.next;
        if (previous == 0) {
            head = following;
            emit NewHead(following);
        } else {
            objects[previous].next = following;
        }
        if (following == 0) {
            tail = previous;
            emit NewTail(previous);
        } else {
            objects[following].prev = previous;
        }
        if (previous != 0 && following != 0) emit ObjectsLinked(previous, following);
        delete objects[_id];
        elementCount -= 1;
        emit ObjectRemoved(_id);
    }
}
